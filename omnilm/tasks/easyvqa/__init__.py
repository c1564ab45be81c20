"""easy-VQA, the task behind `omnilm quickstart`.

  data.py        the easy-VQA items, what each image shows, the prompt layouts, an item as a Sample
  source.py      the `easyvqa` data source and its data.options (registered in data/sources.py)
  quickstart.py  `omnilm quickstart`: the recipes configs/quickstart-*.yaml in order, then evaluation
  phases.py      each phase's wall time and peak resident memory; freed memory handed back between phases
  evaluation.py  the fixed test sets (typed, spoken, transcribed) scored on a run; the two typed layouts compared
  report.py      baselines, the accuracy table, the targets (PASS or MISS), results.png
  demo.py        one held-out image and question, typed or spoken, answered by the trained model

Nothing is imported here, so the data source loads without the quickstart's modules.
"""
