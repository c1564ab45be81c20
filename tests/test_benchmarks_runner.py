"""The benchmark runner: the registry, rows from local copies, a real tiny model whose greedy
replies steer the fixture's answers scored through the runner and the command, bad rows, and
an interrupted run that resumes to the JSON an uninterrupted one writes."""
import json

import pytest

from benchmark_fixtures import POPE_FEATURES, png, write_parquet
from test_serve_support import write_tiny_model
from omnilm import cli
from omnilm.errors import ConfigError, DataError
from omnilm.eval import benchmark_runner
from omnilm.eval.benchmark_runner import benchmark_rows, predictions_path, run_benchmark
from omnilm.eval.benchmarks import BENCHMARKS, get_benchmark
from omnilm.eval.runner import generate_texts, last_line
from omnilm.model.saved import load_pretrained

BATCH = 2


def test_registry_names_every_benchmark_of_the_issue():
    assert set(BENCHMARKS) == {"pope", "mme", "scienceqa-img", "textvqa", "gqa", "mmbench", "mmmu", "mmstar",
                               "librispeech", "easyvqa"}
    assert get_benchmark("pope").hub_id == "lmms-lab/POPE" and get_benchmark("mme").split == "test"
    with pytest.raises(ConfigError, match="unknown benchmark 'popes'; choose one of pope, mme, "):
        get_benchmark("popes")


def test_eval_command_offers_the_registry_and_needs_one_kind_of_run(tmp_path, capsys):
    parse = cli.build_parser().parse_args
    assert parse(["eval", "--model", "m", "--benchmark", "mme"]).benchmark == "mme"
    assert cli.main(["eval", "--model", "m"]) == 2
    assert "either --benchmark NAME or --source SOURCE" in capsys.readouterr().err
    assert cli.main(["eval", "--model", "m", "--benchmark", "pope", "--metric", "vqa"]) == 2
    assert "--metric is not for --benchmark runs" in capsys.readouterr().err
    assert cli.main(["eval", "--model", "m", "--benchmark", "pope", "--data", str(tmp_path / "none")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_a_benchmark_without_a_hub_copy_needs_data(monkeypatch):
    easyvqa = get_benchmark("easyvqa")
    monkeypatch.setattr(easyvqa, "local_rows", lambda: None)
    with pytest.raises(ConfigError, match="no hub copy: give its rows with --data"):
        benchmark_rows(easyvqa)


def test_rows_from_a_parquet_copy_keep_images_undecoded(tmp_path):
    rows = [{"id": "0", "question_id": "1", "question": "Is there a cat?", "answer": "no", "image_source": "x",
             "image": png(0), "category": "random"}]
    read = list(benchmark_rows(get_benchmark("pope"), str(write_parquet(rows, POPE_FEATURES, tmp_path / "p.parquet"))))
    assert len(read) == 1 and isinstance(read[0]["image"]["bytes"], bytes) and read[0]["question"] == "Is there a cat?"


# easy-VQA rows in the benchmark's schema; question i's answer is set from the model's own reply
# (STEERED) or is one it never says.
QUESTIONS = [("is there a red shape?", "yes/no"), ("what color is the shape?", "color"),
             ("what colour is it?", "color"), ("what shape is in the image?", "shape"),
             ("is there a circle?", "yes/no")]
STEERED = {0, 1, 4}
NEVER_SAID = "zebra-answer-nobody-gives"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = write_tiny_model(tmp_path_factory.mktemp("tiny-benchmark-model"))
    return folder, *load_pretrained(folder)


@pytest.fixture(scope="module")
def steered(tiny_model, tmp_path_factory):
    """(rows file, the replies the tiny model gives): rows whose answers were computed first."""
    folder, model, processor = tiny_model
    root = tmp_path_factory.mktemp("easyvqa-rows")
    rows = []
    for i, (question, qtype) in enumerate(QUESTIONS):
        png(50 * i).save(root / f"{i}.png")
        rows.append({"id": f"test-{i}", "question": question, "answer": "", "image": str(root / f"{i}.png"),
                     "type": qtype})
    easyvqa = get_benchmark("easyvqa")
    prompts = [benchmark_runner._readable(it).sample for it in easyvqa.items(rows)]
    # In the runner's batches (left padding makes a reply depend on its batch's other prompts).
    replies = generate_texts(model, processor, prompts, easyvqa.max_new_tokens, BATCH, progress=False)
    for i, (row, reply) in enumerate(zip(rows, replies)):
        row["answer"] = last_line(reply) if i in STEERED else NEVER_SAID
    assert all(last_line(r) != NEVER_SAID for r in replies)
    path = root / "rows.json"
    path.write_text(json.dumps(rows))
    return path, replies


def test_a_real_tiny_model_gets_the_scores_its_replies_steer(tiny_model, steered, tmp_path, capsys):
    folder, *_ = tiny_model
    rows, replies = steered
    out = tmp_path / "easyvqa.json"
    code = cli.main(["eval", "--benchmark", "easyvqa", "--model", str(folder), "--data", str(rows), "--out", str(out),
                     "--batch-size", str(BATCH)])
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["scores"] == pytest.approx({"accuracy": 3 / 5, "yes/no": 1.0, "color": 0.5, "shape": 0.0})
    assert [p["reply"] for p in saved["predictions"]] == replies
    assert saved["count"] == 5 and saved["skipped"] == []
    printed = capsys.readouterr().out
    assert "easyvqa: accuracy 60.0 % (yes/no 100.0 %, color 50.0 %, shape 0.0 %)" in printed
    assert str(predictions_path(out)) in printed


@pytest.fixture
def counted(monkeypatch):
    """How many prompts reach the model (the real generation still answers them)."""
    asked = []

    def spy(model, processor, prompts, *args, **kwargs):
        asked.extend(p.id for p in prompts)
        return generate_texts(model, processor, prompts, *args, **kwargs)

    monkeypatch.setattr(benchmark_runner, "generate_texts", spy)
    return asked


def run(tiny_model, rows_file, out, **kwargs):
    _, model, processor = tiny_model
    easyvqa = get_benchmark("easyvqa")
    return run_benchmark(easyvqa, model, processor, benchmark_rows(easyvqa, str(rows_file)), out, data=str(rows_file),
                         batch_size=BATCH, progress=False, **kwargs)


def test_a_limited_run_then_a_full_one_equals_one_full_run(tiny_model, steered, tmp_path, counted):
    rows, _ = steered
    whole = run(tiny_model, rows, tmp_path / "whole.json")
    counted.clear()
    run(tiny_model, rows, tmp_path / "parts.json", limit=3)
    assert counted == ["test-0", "test-1", "test-2"]
    counted.clear()
    resumed = run(tiny_model, rows, tmp_path / "parts.json")
    assert counted == ["test-3", "test-4"]  # the first three came from the predictions file
    assert (tmp_path / "parts.json").read_text() == (tmp_path / "whole.json").read_text()
    assert resumed.scores == whole.scores


def test_a_run_stopped_by_an_error_resumes_from_its_predictions(tiny_model, steered, tmp_path, monkeypatch):
    rows, _ = steered
    run(tiny_model, rows, tmp_path / "whole.json")
    batches = []

    def fails_on_the_second_batch(model, processor, prompts, *args, **kwargs):
        batches.append(len(prompts))
        if len(batches) == 2:
            raise KeyboardInterrupt
        return generate_texts(model, processor, prompts, *args, **kwargs)

    monkeypatch.setattr(benchmark_runner, "generate_texts", fails_on_the_second_batch)
    out = tmp_path / "stopped.json"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model, rows, out)
    assert not out.exists() and len(predictions_path(out).read_text().splitlines()) == 1 + BATCH  # header + batch 1
    with predictions_path(out).open("a") as cut:
        cut.write('{"id": "test-2", "rep')  # a line the interruption cut off
    monkeypatch.setattr(benchmark_runner, "generate_texts", generate_texts)
    run(tiny_model, rows, out)
    assert out.read_text() == (tmp_path / "whole.json").read_text()


def test_predictions_of_another_evaluation_are_refused(tiny_model, steered, tmp_path):
    rows, _ = steered
    out = tmp_path / "other.json"
    predictions_path(out).write_text(json.dumps({"benchmark": "pope", "max_new_tokens": 128, "rows": str(rows),
                                                 "model": None}) + "\n")
    with pytest.raises(DataError, match="written by another evaluation"):
        run(tiny_model, rows, out)
    run(tiny_model, rows, tmp_path / "mine.json", model_name="runs/a")
    with pytest.raises(DataError, match="'model': 'runs/a'.*choose another --out"):  # another model's replies
        run(tiny_model, rows, tmp_path / "mine.json", model_name="runs/b")


def test_a_bad_row_is_named_or_skipped_and_counted(tiny_model, steered, tmp_path):
    rows_file, _ = steered
    rows = json.loads(rows_file.read_text())
    del rows[1]["question"]
    rows[3]["image"] = str(tmp_path / "missing.png")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"bad.json row #1 \(id test-1\): no column 'question'.*--skip-bad"):
        run(tiny_model, bad, tmp_path / "stops.json")
    result = run(tiny_model, bad, tmp_path / "skips.json", skip_bad=True)
    assert result.count == 3 and len(result.skipped) == 2
    assert "row #3 (id test-3): image not found" in result.skipped[1]


def test_easyvqa_asks_and_scores_as_the_quickstart(monkeypatch, tmp_path):
    """The benchmark's items are the quickstart's typed test questions (same ids, prompts, images,
    order), and the quickstart's typed scores, which come from the runner, are those the ordinary
    evaluator gives the same replies (the numbers of earlier quickstarts)."""
    from omnilm.eval import runner
    from omnilm.eval.runner import split_prompt
    from omnilm.tasks.easyvqa.evaluation import _scored, eval_samples, typed_scored

    easyvqa = get_benchmark("easyvqa")
    items = list(easyvqa.items(easyvqa.local_rows()))
    samples = eval_samples(1000)
    assert [it.id for it in items] == [s.id for s in samples]
    prompt, reference = split_prompt(samples[7])
    assert items[7].sample.messages == prompt.messages and items[7].sample.images == [str(p) for p in prompt.images]
    assert items[7].target == reference
    # Replies as stage 2 writes them, every third answer wrong.
    replies = {s.id: f"blue circle\n{'nope' if i % 3 == 0 else s.meta['answer']}" for i, s in enumerate(samples)}

    def reply(model, processor, prompts, *args, **kwargs):
        return [replies[p.id] for p in prompts]

    monkeypatch.setattr(runner, "generate_texts", reply)
    monkeypatch.setattr(benchmark_runner, "generate_texts", reply)
    evaluator = _scored(None, None, samples, "quickstart")
    quickstart = typed_scored(None, None, samples, tmp_path / "eval-easyvqa.json")
    assert quickstart["accuracy"] == evaluator["accuracy"] and quickstart["by_type"] == evaluator["by_type"]
    assert quickstart["predictions"] == evaluator["predictions"]
    assert 0.6 < quickstart["accuracy"] < 0.7
    assert (tmp_path / "eval-easyvqa.json").is_file()