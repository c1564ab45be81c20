"""`omnilm data check`: every row and media item of a recipe's data, read the way training reads
it (the same sources, processor and feature cache), so the check and training cannot disagree.
It lives with the model because the processor does; it builds no encoder and reads no weights."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tqdm import tqdm

from omnilm.audio.route import Transcription
from omnilm.config import Recipe
from omnilm.data.dataset import SampleDataset, describe_bad
from omnilm.data.feature_cache import open_recipe_cache
from omnilm.data.sources import read_source
from omnilm.errors import DataError
from omnilm.model.build import build_processor


@dataclass
class CheckReport:
    rows: int = 0  # rows read, good and bad
    good_ids: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # "which row or file: why", in file order

    def summary(self) -> str:
        if not self.bad:
            return f"all {self.rows} rows are good"
        return f"{len(self.bad)} of {self.rows} rows are bad; {len(self.good_ids)} good"


def check_data(recipe: Recipe, progress: bool = True) -> CheckReport:
    loaded = read_source(dataclasses.replace(recipe.data, skip_bad=True))  # collect every bad row
    dataset = SampleDataset(loaded.samples, build_processor(recipe), open_recipe_cache(recipe),
                            transcription=Transcription.from_model_config(recipe.model))
    report = CheckReport(rows=len(loaded.samples) + len(loaded.bad), bad=list(loaded.bad))
    for index, sample in enumerate(tqdm(loaded.samples, desc="checking data", unit="sample", disable=not progress)):
        try:
            dataset.encode(sample)
        except DataError as err:
            report.bad.append(describe_bad(sample, err, index))
        else:
            report.good_ids.append(sample.id or f"#{index}")
    return report
