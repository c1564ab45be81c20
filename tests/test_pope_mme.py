"""POPE and MME as lmms-eval scores them: prompts, reply reading and scores against hand-computed
values (POPE's "Yes," / "no." replies, MME's acc+ needing both questions of an image right),
then through the runner and `omnilm eval --benchmark` on hub-schema fixtures."""
import json

import pytest

from benchmark_fixtures import MME_FEATURES, POPE_FEATURES, png, write_parquet, write_saved
from omnilm import cli
from omnilm.errors import DataError
from omnilm.eval import benchmark_runner
from omnilm.eval.benchmarks import get_benchmark
from omnilm.eval.benchmarks.mme import parse_yes_no

SUFFIX = "\nAnswer the question using a single word or phrase."

# (category, ground truth, reply): lmms-eval reads a POPE reply as the whole of it, lowercased and stripped.
POPE_CASES = [("adversarial", "yes", "Yes"), ("adversarial", "no", "no."), ("adversarial", "yes", "no"),
              ("popular", "no", "Yes,"), ("popular", "no", " No \n"),
              ("random", "yes", "yes"), ("random", "no", "yes"), ("random", "yes", "Yes, there is")]


def pope_rows():
    return [{"id": str(i), "question_id": str(i + 1), "question": f" Is there a thing number {i} in the image? ",
             "answer": answer, "image_source": f"COCO_val2014_{i:012d}", "image": png(10 * i), "category": category}
            for i, (category, answer, _) in enumerate(POPE_CASES)]


# (image, category, ground truth, reply): two questions per image.
MME_CASES = [("a.png", "existence", "Yes", "Yes"), ("a.png", "existence", "No", "No."),
             ("b.png", "existence", "Yes", "yes, it is"), ("b.png", "existence", "No", "Yes"),
             ("c.png", "code_reasoning", "Yes", "Not at all"), ("c.png", "code_reasoning", "No", "n")]


def mme_rows():
    return [{"question_id": image, "image": png(40 * i), "question": f"Is this question {i} true? Please answer yes or no.",
             "answer": answer, "category": category} for i, (image, category, answer, _) in enumerate(MME_CASES)]


def results_of(benchmark, rows, replies):
    items = list(benchmark.items(rows))
    return [{"id": it.id, "reply": r, "prediction": benchmark.extract(r, it), "target": it.target, "meta": it.meta}
            for it, r in zip(items, replies)]


def test_pope_prompt_is_the_question_and_lmms_evals_suffix():
    item = next(get_benchmark("pope").items(pope_rows()[:1]))
    assert item.sample.messages[0].content == "<image>\nIs there a thing number 0 in the image?" + SUFFIX
    assert item.target == "yes" and item.meta == {"category": "adversarial", "question_id": "1"}
    assert item.id == "adversarial/1" and len(item.sample.images) == 1


def test_pope_reads_only_a_bare_yes_or_no():
    pope = get_benchmark("pope")
    item = next(pope.items(pope_rows()[:1]))
    assert [pope.extract(r, item) for r in ("Yes", " No \n", "Yes,", "no.", "Yes, there is")] == \
        ["yes", "no", "yes,", "no.", "yes, there is"]


def test_pope_scores_overall_and_per_category():
    pope = get_benchmark("pope")
    scores = pope.score(results_of(pope, pope_rows(), [reply for *_, reply in POPE_CASES]))
    # right: rows 0, 4, 5; "yes" replies: 0, 5 (true) and 6 (false); a "no" reply to a yes: row 2.
    expected = {"accuracy": 3 / 8, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 4 / 8,
                "answered_yes_ratio": 3 / 8,
                "adversarial/accuracy": 1 / 3, "adversarial/precision": 1.0, "adversarial/recall": 0.5,
                "adversarial/f1": 2 / 3, "adversarial/yes_ratio": 2 / 3, "adversarial/answered_yes_ratio": 1 / 3,
                "popular/accuracy": 0.5, "popular/precision": 0.0, "popular/recall": 0.0, "popular/f1": 0.0,
                "popular/yes_ratio": 0.0, "popular/answered_yes_ratio": 0.0,
                "random/accuracy": 1 / 3, "random/precision": 0.5, "random/recall": 1.0, "random/f1": 2 / 3,
                "random/yes_ratio": 2 / 3, "random/answered_yes_ratio": 2 / 3}
    assert scores == pytest.approx(expected)
    assert pope.summary(scores).startswith("pope: accuracy 37.5 %, F1 66.7 %")


def test_pope_refuses_an_answer_that_is_not_yes_or_no():
    row = pope_rows()[0] | {"answer": "maybe"}
    with pytest.raises(DataError, match="column 'answer': expected yes or no, got 'maybe'"):
        list(get_benchmark("pope").items([row]))


def test_mme_prompt_swaps_its_yes_or_no_request_for_the_suffix():
    item = next(get_benchmark("mme").items(mme_rows()[:1]))
    assert item.sample.messages[0].content == "<image>\nIs this question 0 true?" + SUFFIX
    assert item.target == "yes" and item.meta == {"category": "existence", "question_id": "a.png"}


@pytest.mark.parametrize("reply, read", [("Yes", "yes"), ("No.", "no"), ("yes, it is", "yes"), ("y", "yes"),
                                         ("N", "no"), ("Not at all", "no"), ("no, yes", "no"), ("maybe", "other"),
                                         ("The answer is yes", "other"), ("x", "other")])
def test_mme_reads_replies_as_lmms_eval_does(reply, read):
    assert parse_yes_no(reply) == read


def test_mme_acc_plus_needs_both_questions_of_an_image_right():
    mme = get_benchmark("mme")
    scores = mme.score(results_of(mme, mme_rows(), [reply for *_, reply in MME_CASES]))
    # existence: 3 of 4 questions, 1 of 2 images both right; code_reasoning: 1 of 2, no image
    assert scores == pytest.approx({"existence/acc": 0.75, "existence/acc+": 0.5, "existence": 125.0,
                                    "code_reasoning/acc": 0.5, "code_reasoning/acc+": 0.0, "code_reasoning": 50.0,
                                    "perception": 125.0, "cognition": 50.0, "unpaired": 0.0})


def test_mme_leaves_out_an_image_cut_in_half():
    mme = get_benchmark("mme")
    scores = mme.score(results_of(mme, mme_rows()[:5], [reply for *_, reply in MME_CASES][:5]))
    assert scores["unpaired"] == 1 and scores["cognition"] == 0 and scores["perception"] == 125.0
    assert "1 unpaired questions left out" in mme.summary(scores)


@pytest.fixture
def table_model(monkeypatch):
    """The model's replies from a fixed table, prompt text -> reply; the runner and scorers run as they are."""
    table = {}

    def answer(model, processor, prompts, max_new_tokens, batch_size=32, progress=True, desc=""):
        return [table[p.messages[-1].content] for p in prompts]

    monkeypatch.setattr(benchmark_runner, "generate_texts", answer)
    monkeypatch.setattr("omnilm.model.saved.load_pretrained", lambda folder: (None, None))
    return table


def test_pope_through_the_command_from_a_parquet_copy(tmp_path, table_model, capsys):
    pope = get_benchmark("pope")
    rows = pope_rows()
    table_model.update({it.sample.messages[0].content: reply
                        for it, (*_, reply) in zip(pope.items(rows), POPE_CASES)})
    data = write_parquet(rows, POPE_FEATURES, tmp_path / "pope.parquet")
    out = tmp_path / "pope.json"
    code = cli.main(["eval", "--benchmark", "pope", "--model", str(tmp_path), "--data", str(data), "--out", str(out),
                     "--batch-size", "3"])
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["scores"]["accuracy"] == pytest.approx(3 / 8) and saved["scores"]["popular/accuracy"] == 0.5
    assert saved["source"]["hub_id"] == "lmms-lab/POPE" and saved["count"] == 8
    assert [p["prediction"] for p in saved["predictions"]][:4] == ["yes", "no.", "no", "yes,"]
    assert "pope: accuracy 37.5 %" in capsys.readouterr().out


def test_mme_through_the_command_from_a_saved_copy(tmp_path, table_model):
    mme = get_benchmark("mme")
    rows = mme_rows()
    table_model.update({it.sample.messages[0].content: reply for it, (*_, reply) in zip(mme.items(rows), MME_CASES)})
    data = write_saved(rows, MME_FEATURES, tmp_path / "mme")
    out = tmp_path / "mme.json"
    assert cli.main(["eval", "--benchmark", "mme", "--model", str(tmp_path), "--data", str(data), "--out", str(out)]) == 0
    scores = json.loads(out.read_text())["scores"]
    assert scores["perception"] == pytest.approx(125.0) and scores["cognition"] == pytest.approx(50.0)
