"""easy-VQA loader: counts from the package, question types, Sample formatting."""
import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from omnilm.errors import DataError, MissingDependency
from omnilm.tasks.easyvqa import data as easyvqa
from omnilm.tasks.easyvqa.report import majority_answer_accuracy

needs_easyvqa = pytest.mark.skipif(
    importlib.util.find_spec("easy_vqa") is None,
    reason=f"easy-VQA not installed: {easyvqa.INSTALL}",
)


@pytest.fixture(scope="module", name="train_rows")
def _train_rows():
    return easyvqa.load_easyvqa("train")


@pytest.fixture(scope="module", name="test_rows")
def _test_rows():
    return easyvqa.load_easyvqa("test")


@needs_easyvqa
def test_counts(train_rows, test_rows):
    assert len(train_rows) == 38_575
    assert len(test_rows) == 9_673
    assert len({it.image_id for it in train_rows}) == 4_000
    assert len({it.image_id for it in test_rows}) == 1_000
    assert len(easyvqa.answers()) == 13


@needs_easyvqa
def test_items_point_at_images(test_rows):
    item = test_rows[0]
    assert item.id == "test-0"
    assert item.image.is_file() and item.image.suffix == ".png"
    assert item.image.name == f"{item.image_id}.png"
    with Image.open(item.image) as im:
        assert im.size == (64, 64)


@needs_easyvqa
def test_question_types_cover_every_answer(train_rows, test_rows):
    typed = set().union(*easyvqa.QUESTION_TYPES.values())
    assert typed == set(easyvqa.answers())
    counts = Counter(it.qtype for it in train_rows + test_rows)
    assert set(counts) == {"yes/no", "color", "shape"}
    # The package README: 28,407 train and 7,136 test questions are yes/no.
    assert sum(it.qtype == "yes/no" for it in train_rows) == 28_407
    assert sum(it.qtype == "yes/no" for it in test_rows) == 7_136


def test_question_type_rejects_unknown_answer():
    assert easyvqa.question_type("teal") == "color"
    with pytest.raises(DataError, match="purple"):
        easyvqa.question_type("purple")


@needs_easyvqa
def test_majority_baseline():
    answer, acc = majority_answer_accuracy()
    assert answer == "yes"
    assert acc == pytest.approx(3_611 / 9_673)  # 37.3 %


def _item():
    return easyvqa.EasyVQAItem(
        id="test-7", image=Path("img/3.png"), question="what color is the shape?",
        answer="blue", qtype="color", image_id=3,
    )


def test_to_sample_typed_question():
    s = easyvqa.to_sample(_item())
    assert [m.role for m in s.messages] == ["user", "assistant"]
    assert s.messages[0].content == "<image>\nwhat color is the shape?"
    assert s.messages[1].content == "blue"
    assert s.images == [Path("img/3.png")] and s.audios == []
    assert s.id == "test-7" and s.meta["qtype"] == "color"


def test_to_sample_spoken_question():
    s = easyvqa.to_sample(_item(), spoken_audio="speech/abc.wav")
    assert s.messages[0].content == "<image>\n<audio>"
    assert "what color" not in s.messages[0].content  # the model must listen, not read
    assert s.audios == [Path("speech/abc.wav")]
    assert s.meta["question"] == "what color is the shape?"  # kept for alignment targets


def test_to_sample_custom_and_bad_templates():
    s = easyvqa.to_sample(_item(), template="Q: {question} <image> A:")
    assert s.messages[0].content == "Q: what color is the shape? <image> A:"
    with pytest.raises(ValueError, match="exactly one <image>"):
        easyvqa.to_sample(_item(), template="{question}")
    with pytest.raises(ValueError, match="<audio>"):
        easyvqa.to_sample(_item(), spoken_audio="a.wav", template="<image> {question}")
    with pytest.raises(ValueError, match="no spoken_audio"):
        easyvqa.to_sample(_item(), template="<image><audio> {question}")


def test_missing_package_names_install_command(monkeypatch):
    monkeypatch.setattr(easyvqa.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependency, match="pip install --no-deps easy-vqa==1.0"):
        easyvqa.load_easyvqa("test")


def test_unknown_split():
    with pytest.raises(ValueError, match="split"):
        easyvqa.load_easyvqa("validation")


@needs_easyvqa
def test_image_descriptions_agree_with_every_answer(train_rows):
    """Each "red circle" answers all the questions asked of its image, yes/no ones included."""
    import re

    described = easyvqa.image_descriptions(train_rows)
    assert len(described) > 0.85 * 4_000  # most images have questions naming both colour and shape
    checked = 0
    for it in train_rows:
        if it.image not in described:
            continue
        color, shape = described[it.image].split()
        if it.qtype != "yes/no":
            expected = color if it.qtype == "color" else shape
        else:
            words = set(re.findall(r"\w+", it.question))
            holds = all(w == color for w in words & easyvqa.COLOR_ANSWERS) and all(
                w == shape for w in words & easyvqa.SHAPE_ANSWERS)
            expected = "yes" if holds != bool(words & {"not", "no"}) else "no"
        assert expected == it.answer, (it.question, described[it.image], it.answer)
        checked += 1
    assert checked > 30_000


@needs_easyvqa
def test_balance_yes_no_evens_each_question(train_rows):
    balanced = easyvqa.balance_yes_no(train_rows, seed=0)
    before = Counter((it.question, it.answer) for it in train_rows if it.qtype == "yes/no")
    after = Counter((it.question, it.answer) for it in balanced if it.qtype == "yes/no")
    for question, _ in before:
        assert after[(question, "yes")] == after[(question, "no")] == min(before[(question, "yes")],
                                                                          before[(question, "no")])
    ids = [it.id for it in balanced]
    kept = set(ids)
    assert len(kept) == len(ids)
    assert ids == [it.id for it in train_rows if it.id in kept]  # original order
    assert {it.id for it in train_rows if it.qtype != "yes/no"} <= kept  # colour and shape all kept
    assert ids != [it.id for it in easyvqa.balance_yes_no(train_rows, seed=1)]  # seeded choice


def test_the_easyvqa_source_is_the_task_packages_registry_entry():
    """Core data code only names the task's source; loading data pulls in no quickstart, no torch."""
    code = ("import sys; from omnilm.data.sources import source_function; "
            "print(source_function('easyvqa').__module__, "
            "sorted(m for m in sys.modules if m.startswith(('torch', 'omnilm.tasks.easyvqa.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == ("omnilm.tasks.easyvqa.source ['omnilm.tasks.easyvqa.data', 'omnilm.tasks.easyvqa.source']\n")
