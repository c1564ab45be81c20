"""What every data source builds on: a source is a function `DataConfig -> Loaded` that hands
each row to a RowCollector. A malformed row raises DataError naming file and row, or is skipped
and counted when `data.skip_bad` is set."""
from __future__ import annotations

from dataclasses import dataclass, field

from omnilm.config import DataConfig
from omnilm.core.sample import Sample, check_messages
from omnilm.errors import DataError

LOGGED_SKIPS = 20  # skipped rows named one by one in the training log; the rest are counted


@dataclass
class Loaded:
    samples: list[Sample] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # every skipped row: "file row: reason"

    @property
    def skipped(self) -> int:
        return len(self.bad)

    @property
    def errors(self) -> list[str]:
        """The first skipped rows, for the log (`omnilm data check` lists them all)."""
        return self.bad[:LOGGED_SKIPS]


class RowCollector:
    """Turns each row into a Sample; a bad row stops the run or is skipped and counted."""

    def __init__(self, cfg: DataConfig):
        self.cfg, self.out = cfg, Loaded()

    def add(self, where: str, make):
        if self.cfg.limit is not None and len(self.out.samples) >= self.cfg.limit:
            return
        try:
            sample = make()
            check_messages(sample.messages)
            self.out.samples.append(sample)
        except (KeyError, TypeError, ValueError, AttributeError, DataError) as err:
            message = f"{where}: {err if isinstance(err, DataError) else describe_row_error(err)}"
            if not self.cfg.skip_bad:
                raise DataError(message + " (set data.skip_bad=true to skip such rows)") from None
            self.out.bad.append(message)


def describe_row_error(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"missing field {err.args[0]!r}"
    return f"malformed row ({type(err).__name__}: {err})"
