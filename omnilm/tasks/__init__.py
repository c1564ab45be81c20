"""Tasks: a data set with its recipes, evaluation and report, built on omnilm's public interfaces
(a data source registered in omnilm.data.sources.SOURCES, omnilm.eval.runner.evaluate). The core
never imports a task except through such a registry entry."""
