"""The evaluator (`omnilm eval`): prompt/reference split, scoring per metric, the command itself."""
import json

import pytest

from omnilm import cli
from omnilm.core.sample import Message, Sample
from omnilm.errors import ConfigError, DataError
from omnilm.eval import runner
from omnilm.model.build import build_model
from omnilm.model.checkpoint import save_trained_weights
from omnilm.config import save_recipe
from tests.conftest import tiny_recipe


def qa(question, answer, qtype="all", image="a.png", sid=""):
    return Sample([Message("user", "<image>\n" + question), Message("assistant", answer)],
                  images=[image], id=sid, meta={"qtype": qtype})


@pytest.fixture
def fake_generation(monkeypatch):
    """Replace the model with a lookup: prompt text -> answer; records what was asked."""
    asked = []

    def fake(model, processor, prompts, max_new_tokens, batch_size=32, progress=True, desc=""):
        asked.extend(prompts)
        return [model[p.messages[-1].content] for p in prompts]

    monkeypatch.setattr(runner, "generate_texts", fake)
    return asked


def test_split_prompt_uses_the_last_assistant_turn():
    sample = Sample([Message("user", "<image>\nWhat colour?"), Message("assistant", "Red."),
                     Message("user", "And the shape?"), Message("assistant", "A circle.")], images=["x.png"])
    prompt, ref = runner.split_prompt(sample)
    assert ref == "A circle."
    assert [m.content for m in prompt.messages] == ["<image>\nWhat colour?", "Red.", "And the shape?"]
    assert prompt.images == ["x.png"]
    with pytest.raises(DataError, match="assistant"):
        runner.split_prompt(Sample([Message("user", "hi")], id="lonely"))


def test_vqa_accuracy_overall_and_per_group(fake_generation):
    samples = [qa("is it red?", "yes", "yes/no"), qa("what colour?", "blue", "color"),
               qa("what shape?", "circle", "shape"), qa("is it round?", "no", "yes/no")]
    answers = {"<image>\nis it red?": "Yes.", "<image>\nwhat colour?": "blue",
               "<image>\nwhat shape?": "a circle", "<image>\nis it round?": "yes"}
    result = runner.evaluate(answers, None, samples, "vqa", progress=False)
    assert result.scores["accuracy"] == pytest.approx(0.75)  # "Yes." and "a circle" normalize to the reference
    assert result.by_group["yes/no"] == {"accuracy": 0.5, "count": 2}
    assert result.by_group["shape"]["accuracy"] == 1.0
    assert [r["prediction"] for r in result.predictions] == ["Yes.", "blue", "a circle", "yes"]
    assert "75.0 %" in result.summary()


def test_last_line_answer_scores_the_answer_after_a_description(fake_generation):
    samples = [qa("is it red?", "yes", "yes/no"), qa("what shape?", "circle", "shape"), qa("what colour?", "red")]
    replies = {"<image>\nis it red?": "red circle\nyes", "<image>\nwhat shape?": "blue circle\n\n circle \n",
               "<image>\nwhat colour?": "red circle"}
    whole = runner.evaluate(replies, None, samples, "vqa", progress=False)
    assert whole.scores["accuracy"] == 0 and "reply" not in whole.predictions[0]  # whole replies
    result = runner.evaluate(replies, None, samples, "vqa", progress=False, answer="last-line")
    assert result.scores["accuracy"] == pytest.approx(2 / 3)  # "red circle" is its own last line: wrong
    assert [r["prediction"] for r in result.predictions] == ["yes", "circle", "red circle"]
    assert result.predictions[0]["reply"] == "red circle\nyes"
    assert runner.last_line("\n \n") == ""


def test_caption_pools_references_of_the_same_prompt(fake_generation):
    samples = [qa("Describe.", "a red circle", image="1.png"), qa("Describe.", "red round shape", image="1.png"),
               qa("Describe.", "a blue square", image="2.png")]
    answers = {"<image>\nDescribe.": "a red circle"}
    result = runner.evaluate(answers, None, samples, "caption", progress=False)
    assert len(fake_generation) == 2  # one generation per distinct image + prompt
    assert result.count == 2
    assert result.predictions[0]["reference"] == ["a red circle", "red round shape"]
    assert 0 < result.scores["bleu4"] < 1 and result.scores["cider"] >= 0


def test_word_error_rate(fake_generation):
    samples = [Sample([Message("user", "<audio>\nTranscribe:"), Message("assistant", "hello there world")],
                      audios=["a.wav"])]
    result = runner.evaluate({"<audio>\nTranscribe:": "hello world"}, None, samples, "wer", progress=False)
    assert result.scores["wer"] == pytest.approx(1 / 3)


def test_unknown_metric_is_refused():
    with pytest.raises(Exception, match="bleu"):
        runner.evaluate(None, None, [qa("q", "a")], "bleu")


def test_unknown_answer_part_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="'first-line'.*reply, last-line"):
        runner.evaluate(None, None, [qa("q", "a")], "vqa", answer="first-line")


def test_eval_command_chooses_the_answer_part():
    parse = cli.build_parser().parse_args
    base = ["eval", "--model", "run", "--source", "easyvqa"]
    assert parse(base).answer == "reply"
    assert parse([*base, "--answer", "last-line"]).answer == "last-line"
    assert parse([*base, "--final-line"]).answer == "last-line"  # the older spelling


def test_eval_command_scores_a_saved_model(tiny_data, tmp_path, capsys):
    """A tiny random model saved as a run folder, scored on the LLaVA-format fixture end to end."""
    recipe = tiny_recipe(tiny_data, tmp_path)
    run = tmp_path / "run"
    model, _ = build_model(recipe, base_dir=run / "base")
    from omnilm.model.build import materialize_random, portable
    from omnilm.model.saved import RECIPE_FILE

    save_recipe(portable(materialize_random(recipe, run / "base"), run), run / RECIPE_FILE)
    save_trained_weights(model, run)
    out = tmp_path / "scores.json"
    code = cli.main(["eval", "--model", str(run), "--data", str(tiny_data["llava"]), "--source", "llava",
                     "--image-dir", str(tiny_data["llava_images"]), "--limit", "4", "--max-new-tokens", "3", "--out", str(out)])
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["metric"] == "vqa" and saved["count"] == 4
    assert 0.0 <= saved["scores"]["accuracy"] <= 1.0
    assert saved["predictions"][0]["reference"].startswith("It is a ")  # the last assistant turn
    assert "vqa: accuracy" in capsys.readouterr().out


def test_eval_command_reports_a_missing_file(tmp_path, capsys):
    code = cli.main(["eval", "--model", str(tmp_path), "--data", str(tmp_path / "none.json"), "--source", "llava"])
    assert code == 2
    assert "file not found" in capsys.readouterr().err
