"""Hand-checkable cases for the eval metrics, including a failing case for each."""
import pytest

from omnilm.errors import DataError
from omnilm.eval.metrics import (
    accuracy_by_group,
    bleu4,
    cider,
    normalize_answer,
    vqa_accuracy,
    word_error_rate,
)

CAPTIONS = [
    "a dog runs on the grass",
    "two cats sleep on a red sofa",
    "a man rides a bike down the street",
]


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Yes.", "yes"),
        ("  A   red CIRCLE ", "red circle"),
        ("The two dogs!", "2 dogs"),
        ("1,000", "1000"),
        ("2.5 meters.", "2.5 meters"),
        ("t-shirt", "t shirt"),
        ("don't", "dont"),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_vqa_accuracy_exact_match_after_normalization():
    preds = ["Yes.", "a Circle", "blue", "2"]
    refs = ["yes", "circle", "red", ["two", "2 things"]]
    assert vqa_accuracy(preds, refs) == pytest.approx(3 / 4)


def test_vqa_accuracy_is_not_substring_match():
    assert vqa_accuracy(["yes it is red"], ["yes"]) == 0.0


def test_vqa_accuracy_rejects_unpaired_inputs():
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        vqa_accuracy(["yes", "no"], ["yes"])
    with pytest.raises(DataError, match="no predictions"):
        vqa_accuracy([], [])


def test_accuracy_by_group():
    preds = ["yes", "no", "red", "circle", "circle"]
    refs = ["yes", "yes", "red", "circle", "triangle"]
    groups = ["yes/no", "yes/no", "color", "shape", "shape"]
    assert accuracy_by_group(preds, refs, groups) == {
        "color": (1.0, 1),
        "shape": (0.5, 2),
        "yes/no": (0.5, 2),
    }


def test_bleu4_identical_captions_score_one():
    assert bleu4(CAPTIONS, [[c] for c in CAPTIONS]) == pytest.approx(1.0, abs=1e-6)


def test_bleu4_ignores_case_and_punctuation():
    preds = [c.capitalize() + "." for c in CAPTIONS]
    assert bleu4(preds, [[c] for c in CAPTIONS]) == pytest.approx(1.0, abs=1e-6)


def test_bleu4_unrelated_captions_score_near_zero():
    preds = ["purple elephants juggle quietly", "seven bright lamps hum", "green tea cools slowly"]
    assert bleu4(preds, [[c] for c in CAPTIONS]) < 1e-6


def test_bleu4_uses_any_of_several_references():
    refs = [["something else entirely", c] for c in CAPTIONS]
    assert bleu4(CAPTIONS, refs) == pytest.approx(1.0, abs=1e-6)


def test_cider_identical_high_unrelated_zero():
    refs = [[c] for c in CAPTIONS]
    # CIDEr-D is 10 x mean cosine similarity of tf-idf n-gram vectors: 10 when identical.
    assert cider(CAPTIONS, refs) == pytest.approx(10.0)
    preds = ["purple elephants juggle quietly", "seven bright lamps hum", "green tea cools slowly"]
    assert cider(preds, refs) == 0.0


def test_cider_refuses_a_single_image():
    with pytest.raises(DataError, match="at least 2"):
        cider(["a dog"], [["a dog"]])


def test_wer_one_substitution_in_four_words():
    assert word_error_rate(["the cat sat down"], ["the dog sat down"]) == pytest.approx(0.25)


def test_wer_normalizes_case_and_punctuation():
    assert word_error_rate(["Hello, World!"], ["hello world"]) == 0.0


def test_wer_is_corpus_level():
    # 1 error over 4 + 2 reference words, not the mean of per-row rates (0.125).
    preds = ["the dog sat down", "good night"]
    refs = ["the cat sat down", "good night"]
    assert word_error_rate(preds, refs) == pytest.approx(1 / 6)


def test_wer_counts_a_wrong_transcript():
    assert word_error_rate(["completely different"], ["is there a circle"]) == pytest.approx(1.0)
    with pytest.raises(DataError, match="empty"):
        word_error_rate(["x"], ["?!"])
