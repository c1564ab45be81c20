"""`omnilm eval --benchmark NAME`: a benchmark's rows -> items -> greedy replies -> its scores.

Rows come from the hub through `datasets` (the benchmark's hub id, configuration, split and
revision) or from a local copy (--data: parquet, arrow, json or a save_to_disk folder), with
images left undecoded. Every reply is appended to a predictions file as soon as its batch is
done (`<out>.predictions.jsonl`, one line per item, flushed), so a run stopped half way continues
from it: items already predicted are not asked again, and the final JSON is the one an
uninterrupted run writes (it holds nothing that depends on how the run was split).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from omnilm.core.sample import Sample
from omnilm.data.images import load_image
from omnilm.errors import ConfigError, DataError, MediaError
from omnilm.eval.benchmarks import Benchmark, Item, get_benchmark
from omnilm.eval.runner import generate_texts
from omnilm.files import atomic_file

PREDICTIONS_SUFFIX = ".predictions.jsonl"
# What a row may fail with while its items are built: a missing column, a wrong type, a bad image.
ROW_ERRORS = (DataError, MediaError, KeyError, TypeError, ValueError)


@dataclass
class BenchmarkResult:
    benchmark: str
    source: dict  # hub_id, config_name, split, revision, lmms_eval_task, data (a local copy or None)
    scores: dict
    summary: str
    count: int  # items scored
    skipped: list = field(default_factory=list)  # "row: problem" for each row left out (--skip-bad)
    predictions: list = field(default_factory=list)  # {"id", "reply", "prediction", "target", "meta"}

    def to_dict(self) -> dict:
        return {"benchmark": self.benchmark, "source": self.source, "scores": self.scores, "summary": self.summary,
                "count": self.count, "skipped": self.skipped, "predictions": self.predictions}


def predictions_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + PREDICTIONS_SUFFIX)


def benchmark_rows(benchmark: Benchmark, data: str | None = None) -> Iterator[dict]:
    """The benchmark's rows as dicts in its hub schema, images undecoded."""
    from omnilm.config import DataConfig
    from omnilm.data.hf_source import open_rows, read_rows

    if data is None and (own := benchmark.local_rows()) is not None:
        return iter(own)
    if data is None and not benchmark.hub_id:
        raise ConfigError(f"benchmark {benchmark.name!r} has no hub copy: give its rows with --data")
    if data is not None and not Path(data).exists():
        raise DataError(f"--data {data}: no such file or folder")
    if data is not None and Path(data).is_file() and Path(data).suffix in (".json", ".jsonl"):
        return _json_rows(Path(data))
    if data is not None:  # a local copy holds the rows `items` reads, joined already (GQA: with its images)
        cfg = DataConfig(source="hf", path=data, split=benchmark.split)
        return read_rows(open_rows(cfg), cfg)

    def rows_of(config_name: str | None):
        cfg = DataConfig(source="hf", path=benchmark.hub_id, name=config_name, split=benchmark.split,
                         revision=benchmark.revision)
        return read_rows(open_rows(cfg), cfg)

    return benchmark.joined(rows_of(benchmark.config_name), rows_of)


def _json_rows(path: Path) -> Iterator[dict]:
    """A JSON list of rows, or JSON Lines (datasets would infer one type per column and may
    refuse rows whose image cells differ; a benchmark's own checks say what is wrong instead)."""
    text = path.read_text()
    try:
        rows = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()
                                                                 if line.strip()]
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: expected a list of rows (objects)")
    return iter(rows)


def build_items(benchmark: Benchmark, rows: Iterable[dict], where: str, *, skip_bad: bool = False,
                skipped: list | None = None) -> Iterator[Item]:
    """Each row's items, its images read (a bad row raises naming it, or with skip_bad is counted)."""
    seen: set[str] = set()
    for index, row in enumerate(rows):
        try:
            items = [_readable(item) for item in benchmark.items([row])]
        except ROW_ERRORS as err:
            problem = f"{where} row #{index}{_row_id(row)}: {err}"
            if not skip_bad:
                raise DataError(f"{problem} (--skip-bad leaves such rows out)") from None
            if skipped is not None:
                skipped.append(problem)
            continue
        for item in items:
            if item.id in seen:
                raise DataError(f"{where} row #{index}: item id {item.id!r} appears twice; ids must be unique")
            seen.add(item.id)
            yield item


def _row_id(row) -> str:
    for key in ("question_id", "index", "id"):
        if isinstance(row, dict) and row.get(key) is not None:
            return f" ({key} {row[key]})"
    return ""


def _readable(item: Item) -> Item:
    """The item with its images decoded (once, here), so a bad image is the row's error, not a batch's."""
    sample = item.sample
    images = [load_image(image, name=f"item {item.id} image") for image in sample.images]
    return Item(item.id, Sample(sample.messages, images, sample.audios, sample.id or item.id, sample.meta),
                item.target, item.meta)


def read_predictions(path: Path, expected: dict) -> dict[str, dict]:
    """The records an earlier run of the same evaluation (`expected`, its header) wrote; its last
    line may be cut off by the interruption."""
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    header = _parse(lines[0]) if lines else None
    if header != expected:
        raise DataError(f"{path} was written by another evaluation ({header}, not {expected}); "
                        "choose another --out or delete it")
    done = {}
    for line in lines[1:]:
        record = _parse(line)
        if record is not None and "id" in record:
            done[record["id"]] = record
    return done


def _parse(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _header(benchmark: Benchmark, max_new_tokens: int, rows: str, model: str | None) -> dict:
    """What makes two runs one evaluation, so a predictions file is only ever continued by its own."""
    return {"benchmark": benchmark.name, "max_new_tokens": max_new_tokens, "rows": rows, "model": model}


def run_benchmark(benchmark: Benchmark, model, processor, rows: Iterable[dict], out: str | Path, *,
                  where: str = "", data: str | None = None, limit: int | None = None, batch_size: int = 8,
                  skip_bad: bool = False, max_new_tokens: int | None = None, model_name: str | None = None,
                  progress: bool = True) -> BenchmarkResult:
    """Generate for every item not yet in the predictions file, then score them all and write the JSON."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    tokens = max_new_tokens or benchmark.max_new_tokens
    path = predictions_path(out)
    where = where or data or benchmark.hub_id or benchmark.name
    header = _header(benchmark, tokens, where, model_name)
    done = read_predictions(path, header)
    path.parent.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    order: list[str] = []
    with path.open("a") as sink, tqdm(total=limit, desc=benchmark.name, unit="q", disable=not progress,
                                      dynamic_ncols=True) as bar:
        if sink.tell() == 0:
            _write(sink, header)
        elif not path.read_bytes().endswith(b"\n"):
            sink.write("\n")  # end the line an interruption cut off: it is skipped as unreadable
        pending: list[Item] = []
        for item in build_items(benchmark, rows, where, skip_bad=skip_bad, skipped=skipped):
            order.append(item.id)
            if item.id in done:
                bar.update(1)
            else:
                pending.append(item)
            if len(pending) == batch_size:
                _predict(benchmark, model, processor, pending, tokens, done, sink, bar)
                pending = []
            if limit is not None and len(order) >= limit:
                break
        if pending:
            _predict(benchmark, model, processor, pending, tokens, done, sink, bar)
    if not order:
        raise DataError(f"benchmark {benchmark.name}: no items to score"
                        + (f" ({len(skipped)} rows skipped)" if skipped else ""))
    results = [done[item_id] for item_id in order]
    scores = benchmark.score(results)
    source = {"hub_id": benchmark.hub_id, "config_name": benchmark.config_name, "split": benchmark.split,
              "revision": benchmark.revision, "lmms_eval_task": benchmark.lmms_eval_task, "data": data}
    result = BenchmarkResult(benchmark.name, source, scores, benchmark.summary(scores), len(results), skipped, results)
    with atomic_file(Path(out)) as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _predict(benchmark, model, processor, items: list[Item], tokens: int, done: dict, sink, bar) -> None:
    replies = generate_texts(model, processor, [item.sample for item in items], tokens, len(items), progress=False)
    for item, reply in zip(items, replies):
        record = {"id": item.id, "reply": reply, "prediction": benchmark.extract(reply, item),
                  "target": item.target, "meta": item.meta}
        done[item.id] = record
        _write(sink, record)
    bar.update(len(items))


def _write(sink, record: dict) -> None:
    sink.write(json.dumps(record) + "\n")
    sink.flush()


def evaluate_benchmark(name: str, model_dir, *, data: str | None = None, limit: int | None = None,
                       out: str | Path | None = None, batch_size: int = 8, skip_bad: bool = False,
                       max_new_tokens: int | None = None, progress: bool = True) -> BenchmarkResult:
    """`omnilm eval --benchmark NAME --model RUN`: load the model, run the benchmark, write the JSON."""
    from omnilm.model.saved import load_pretrained

    benchmark = get_benchmark(name)
    rows = benchmark_rows(benchmark, data)  # a missing --data is said before the model loads
    model, processor = load_pretrained(model_dir)
    return run_benchmark(benchmark, model, processor, rows, out or default_out(name), data=data, limit=limit,
                         batch_size=batch_size, skip_bad=skip_bad, max_new_tokens=max_new_tokens,
                         model_name=str(model_dir), progress=progress)


def default_out(name: str) -> Path:
    return Path(f"eval-{name}.json")
