"""Benchmark scorers on rows built in each hub dataset's schema: prompts, extraction, scores.

No model runs here: replies are written by hand, and every expected score is computed by hand
in the test's comments.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from omnilm.data.images import load_image
from omnilm.errors import ConfigError, DataError
from omnilm.eval.benchmarks import get_benchmark
from omnilm.eval.benchmarks.gqa import attach_images
from omnilm.eval.benchmarks.mmmu_rules import open_answers, open_correct
from omnilm.eval.metrics import vqa_soft_accuracy


# The benchmarks this file covers (POPE, MME and easy-VQA are the runner's, tested beside it).
SCORERS = ("scienceqa-img", "textvqa", "gqa", "mmbench", "mmmu", "mmstar", "librispeech")


def png(color=(255, 0, 0), size=(8, 6)) -> dict:
    """An Image-column value as `datasets` yields it undecoded."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def scored(bench, items, replies):
    """The results list the runner hands to score(): one entry per item, in item order."""
    return [{"id": item.id, "reply": reply, "prediction": bench.extract(reply, item), "target": item.target,
             "meta": item.meta} for item, reply in zip(items, replies, strict=True)]


def test_registry_resolves_every_name_and_rejects_unknown_ones():
    for name in SCORERS:
        assert get_benchmark(name).name == name
    with pytest.raises(ConfigError, match="unknown benchmark 'mmlu'"):
        get_benchmark("mmlu")


# --- ScienceQA-IMG ------------------------------------------------------------------------

def sqa_row(question, choices, answer, hint=""):
    return {"image": png(), "question": question, "choices": choices, "answer": answer, "hint": hint,
            "task": "closed choice", "grade": "grade5", "subject": "natural science", "topic": "geography",
            "category": "Geography", "skill": "Read a map", "lecture": "", "solution": ""}


def test_scienceqa_prompt_target_and_media():
    bench = get_benchmark("scienceqa-img")
    items = list(bench.items([sqa_row("Which is a state?", ["Ohio", "Lake"], 0, hint="Look at the map."),
                              sqa_row("Which is cold?", ["ice", "fire", "sun"], 2)]))
    assert items[0].sample.messages[0].content == (
        "<image>\nContext: Look at the map.\nWhich is a state?\nA. Ohio\nB. Lake\n"
        "Answer with the option's letter from the given choices directly.")
    assert items[1].sample.messages[0].content.startswith("<image>\nWhich is cold?\nA. ice")
    assert [i.target for i in items] == ["A", "C"]
    assert load_image(items[0].sample.images[0]).size == (8, 6)


def test_scienceqa_extraction_follows_llava_rule():
    bench = get_benchmark("scienceqa-img")
    item = next(bench.items([sqa_row("q", ["x", "y", "z"], 1)]))
    assert bench.extract("B", item) == "B"
    assert bench.extract(" B. y\n", item) == "B"
    assert bench.extract("b", item) == ""  # the rule is case-sensitive
    assert bench.extract("The answer is B", item) == ""


def test_scienceqa_accuracy():
    bench = get_benchmark("scienceqa-img")
    items = list(bench.items([sqa_row("q", ["x", "y"], i % 2) for i in range(4)]))  # A, B, A, B
    scores = bench.score(scored(bench, items, ["A", "A", "A.", "b"]))
    assert scores["accuracy"] == pytest.approx(50.0)  # right: 1st and 3rd of 4


def test_scienceqa_bad_answer_index_is_named():
    with pytest.raises(DataError, match="column 'answer': 5 is not an index into its 2 choices"):
        list(get_benchmark("scienceqa-img").items([sqa_row("q", ["x", "y"], 5)]))


# --- TextVQA ------------------------------------------------------------------------------

def textvqa_row(question_id, question, answers):
    return {"image_id": "abc", "question_id": question_id, "question": question, "question_tokens": question.split(),
            "image": png(), "image_width": 8, "image_height": 6, "flickr_original_url": "", "flickr_300k_url": "",
            "answers": answers, "image_classes": ["sign"], "set_name": "val"}


def test_textvqa_prompt_capitalizes_as_the_task_does():
    item = next(get_benchmark("textvqa").items([textvqa_row(7, "what does the SIGN say?", ["stop"] * 10)]))
    assert item.id == "7"
    assert item.sample.messages[0].content == (
        "<image>\nWhat does the sign say?\nAnswer the question using a single word or phrase.")
    assert item.target == ["stop"] * 10


def test_vqa_soft_accuracy_averages_the_ten_leave_one_out_subsets():
    # 2 humans said "stop": leaving out one of them (2 subsets) leaves 1 match -> 1/3; the other
    # 8 subsets keep both -> 2/3. (2 * 1/3 + 8 * 2/3) / 10 = 18/30 = 0.6.
    answers = ["stop", "Stop!"] + ["go"] * 8
    assert vqa_soft_accuracy("STOP", answers) == pytest.approx(0.6)
    # 3 matches: the 3 subsets without one keep 2 -> 2/3, the other 7 keep 3 -> 1: (2 + 7) / 10 = 0.9.
    assert vqa_soft_accuracy("two", ["2", "2", "two"] + ["1"] * 7) == pytest.approx(0.9)
    assert vqa_soft_accuracy("go", ["go"] * 4 + ["x"] * 6) == pytest.approx(1.0)
    assert vqa_soft_accuracy("don't", ["dont"] * 3 + ["x"] * 7) == pytest.approx(0.9)


def test_textvqa_score_is_the_mean_soft_accuracy_in_percent():
    bench = get_benchmark("textvqa")
    items = list(bench.items([textvqa_row(1, "q", ["stop", "stop"] + ["go"] * 8),
                              textvqa_row(2, "q", ["a sign"] * 10)]))
    scores = bench.score(scored(bench, items, ["Stop.", "Sign"]))
    assert scores["accuracy"] == pytest.approx((60.0 + 100.0) / 2)  # "a sign" and "sign" meet


# --- GQA ----------------------------------------------------------------------------------

def gqa_rows():
    instructions = [{"id": "q1", "imageId": "n1", "question": "Is the cup red?", "answer": "yes",
                     "fullAnswer": "Yes, the cup is red.", "isBalanced": True, "groups": {"global": None, "local": "c"},
                     "entailed": "", "equivalent": "", "types": {"structural": "verify"}, "annotations": {},
                     "semantic": [], "semanticStr": ""},
                    {"id": "q2", "imageId": "n2", "question": "What is on the table?", "answer": "t-shirt",
                     "fullAnswer": "", "isBalanced": True, "groups": {}, "entailed": "", "equivalent": "",
                     "types": {}, "annotations": {}, "semantic": [], "semanticStr": ""}]
    images = [{"id": "n1", "image": png((0, 0, 255))}, {"id": "n2", "image": png((0, 255, 0), (5, 5))}]
    return instructions, images


def test_gqa_joins_images_by_image_id_and_prompts():
    bench = get_benchmark("gqa")
    instructions, images = gqa_rows()
    asked = []

    def other_config(name):  # what the runner reads from the hub: another configuration's rows
        asked.append(name)
        return images

    items = list(bench.items(bench.joined(instructions, other_config)))
    assert asked == ["testdev_balanced_images"]
    assert items[0].sample.messages[0].content == (
        "<image>\nIs the cup red?\nAnswer the question using a single word or phrase.")
    assert load_image(items[1].sample.images[0]).size == (5, 5)
    with pytest.raises(DataError, match="config 'testdev_balanced_images'"):
        list(bench.items(instructions))
    with pytest.raises(DataError, match="row #1: image 'n2' is not in the testdev_balanced_images rows"):
        list(attach_images(instructions, images[:1]))


def test_gqa_exact_match_ignores_case_and_punctuation_only():
    bench = get_benchmark("gqa")
    items = list(bench.items(attach_images(*gqa_rows())))
    assert bench.score(scored(bench, items, ["Yes.", "T-Shirt"]))["exact_match"] == pytest.approx(100.0)
    assert bench.score(scored(bench, items, ["Yes, it is.", "tshirt"]))["exact_match"] == pytest.approx(50.0)


# --- MMBench ------------------------------------------------------------------------------

def mmbench_row(index, answer, hint=None, d=None):
    return {"index": index, "question": "What animal is this?", "hint": hint, "A": "cat", "B": "dog", "C": "cow",
            "D": d, "answer": answer, "category": "object_localization", "image": png(), "source": "x",
            "L2-category": "fine-grained perception", "comment": None, "split": "dev"}


def test_mmbench_writes_every_rotation_and_skips_hub_copies():
    bench = get_benchmark("mmbench")
    items = list(bench.items([mmbench_row(5, "B", hint="A farm."), mmbench_row(1_000_005, "C")]))
    assert [i.id for i in items] == ["5/0", "5/1", "5/2"]  # three options, three rotations; the copy skipped
    assert items[0].sample.messages[0].content == (
        "<image>\nA farm. What animal is this? There are several options:\nA. cat\nB. dog\nC. cow\n\n"
        "Answer with the option's letter from the given choices directly.")
    assert items[1].meta["options"] == {"A": "dog", "B": "cow", "C": "cat"}
    assert [i.target for i in items] == ["B", "A", "C"]  # "dog" moves with each rotation
    assert "nan" not in items[0].sample.messages[0].content


def test_mmbench_hint_nan_is_left_out():
    item = next(get_benchmark("mmbench").items([mmbench_row(1, "A", hint=math.nan, d="nan")]))
    assert item.sample.messages[0].content.startswith("<image>\nWhat animal is this? There are several options:")
    assert "D." not in item.sample.messages[0].content


def test_mmbench_letter_inference():
    bench = get_benchmark("mmbench")
    item = next(bench.items([mmbench_row(1, "B")]))
    assert bench.extract("B", item) == "B"
    assert bench.extract("(B) dog", item) == "B"
    assert bench.extract("It is a dog.", item) == "B"  # no letter word: the option text decides
    assert bench.extract("A or B", item) == ""  # two letters, and no option text in the reply
    # The capital "A" is the only letter word, so MMBench reads it as the letter.
    assert bench.extract("I think the answer is A cat or a dog", item) == "A"


def test_mmbench_one_wrong_rotation_fails_the_question():
    bench = get_benchmark("mmbench")
    items = list(bench.items([mmbench_row(1, "B"), mmbench_row(2, "A")]))
    # question 1 (targets B, A, C) all right; question 2 (targets A, C, B) wrong in rotation 2.
    replies = ["B", "A", "C", "A", "C", "A"]
    scores = bench.score(scored(bench, items, replies))
    assert scores["circular_accuracy"] == pytest.approx(50.0)
    assert scores["questions"] == 2
    assert scores["category/object_localization"] == pytest.approx(50.0)


# --- MMMU ---------------------------------------------------------------------------------

def mmmu_row(qid, question, options, answer, kind, **images):
    row = {"id": qid, "question": question, "options": options, "explanation": "", "img_type": "['Diagrams']",
           "answer": answer, "topic_difficulty": "Easy", "question_type": kind, "subfield": "x"}
    row.update({f"image_{n}": None for n in range(1, 8)})
    row.update(images)
    return row


def test_mmmu_prompts_keep_image_references_and_order_images_by_name():
    bench = get_benchmark("mmmu")
    rows = [mmmu_row("validation_Art_Theory_1", "Compare <image 2> with <image 1>.", "['red', 'blue']", "B",
                     "multiple-choice", image_1=png(size=(3, 3)), image_2=png(size=(4, 4))),
            mmmu_row("validation_Math_2", "How long is <image 1>?", "[]", "3.5", "open", image_1=png())]
    choice, open_item = bench.items(rows)
    assert choice.sample.messages[0].content == (
        "<image>\n<image>\nCompare <image 2> with <image 1>.\nA. red\nB. blue\n\n"
        "Answer with the option's letter from the given choices directly.")
    assert [load_image(i).size for i in choice.sample.images] == [(3, 3), (4, 4)]
    assert open_item.sample.messages[0].content == (
        "<image>\nHow long is <image 1>?\n\nAnswer the question using a single word or phrase.")
    assert choice.meta["subject"] == "Art_Theory" and open_item.meta["subject"] == "Math"


def test_mmmu_multiple_choice_parsing():
    bench = get_benchmark("mmmu")
    item = next(bench.items([mmmu_row("validation_Art_1", "q", "['red', 'blue', 'green']", "B", "multiple-choice")]))
    assert bench.extract("(B)", item) == "B"
    assert bench.extract("B.", item) == "B"
    assert bench.extract("I would say (A) at first, but (C)", item) == "C"  # last bracketed one
    assert bench.extract("the colour I see here is clearly blue", item) == "B"  # over 5 words: option text
    unparsed = bench.extract("hmm", item)
    assert unparsed in "ABC" and bench.extract("hmm", item) == unparsed  # seeded, so stable on resume


def test_mmmu_open_numeric_answers():
    assert open_correct("3.5", open_answers("The length is 3.50 cm."))
    assert open_correct("1,000", open_answers("so the total = 1000"))
    assert not open_correct("3.5", open_answers("It is 3.6"))
    assert open_correct(["24/7", "3.429"], open_answers("therefore 3.4286"))  # both round to 3.43
    assert open_correct("paris", open_answers("The answer is Paris."))


def test_mmmu_scores_per_subject_and_overall():
    bench = get_benchmark("mmmu")
    rows = [mmmu_row("validation_Art_1", "q", "['x', 'y']", "A", "multiple-choice"),
            mmmu_row("validation_Art_2", "q", "['x', 'y']", "B", "multiple-choice"),
            mmmu_row("validation_Math_1", "q", "[]", "['12', '12.0']", "open")]
    items = list(bench.items(rows))
    assert items[2].target == ["12", "12.0"]
    scores = bench.score(scored(bench, items, ["A", "A", "The result is 12."]))
    assert scores["accuracy"] == pytest.approx(200 / 3)
    assert scores["subject/Art"] == pytest.approx(50.0) and scores["subject/Math"] == pytest.approx(100.0)


# --- MMStar -------------------------------------------------------------------------------

def mmstar_row(index, answer, category, l2):
    return {"index": index, "question": "Which shape is red? Options: A: circle, B: square", "image": png(),
            "answer": answer, "category": category, "l2_category": l2, "meta_info": {"source": "x"}}


def test_mmstar_prompt_and_extraction():
    bench = get_benchmark("mmstar")
    item = next(bench.items([mmstar_row(0, "B", "math", "geometry")]))
    assert item.sample.messages[0].content == (
        "<image>\nWhich shape is red? Options: A: circle, B: square\n"
        "Answer with the option's letter from the given choices directly.")
    assert [bench.extract(r, item) for r in ["B", "(b) square", "Option B", "The answer is B.", "square"]] == \
        ["B", "B", "B", "B", "S"]


def test_mmstar_scores_average_l2_categories():
    bench = get_benchmark("mmstar")
    rows = [mmstar_row(0, "A", "math", "geometry"), mmstar_row(1, "A", "math", "geometry"),
            mmstar_row(2, "A", "math", "statistical reasoning"), mmstar_row(3, "A", "coarse perception", "image emotion")]
    items = list(bench.items(rows))
    scores = bench.score(scored(bench, items, ["A", "B", "A", "B"]))
    # l2 accuracies: geometry 50, statistical reasoning 100, image emotion 0.
    assert scores["category/math"] == pytest.approx(75.0)
    assert scores["category/coarse perception"] == pytest.approx(0.0)
    assert scores["average"] == pytest.approx(50.0)


# --- LibriSpeech --------------------------------------------------------------------------

def libri_row(number, gt, audio):
    return {"audio": audio, "gt": gt, "source": "librispeech_test_clean", "task": "asr_en", "id": f"1089-{number}"}


def test_librispeech_items_carry_the_audio_as_the_loader_reads_it():
    bench = get_benchmark("librispeech")
    wave = np.zeros(1600, dtype=np.float64)
    item = next(bench.items([libri_row(0, "HELLO WORLD", {"array": wave, "sampling_rate": 16000, "path": None})]))
    assert item.sample.messages[0].content == (
        "<audio>\nPlease recognize the speech and only output the recognized content:")
    waveform, rate = item.sample.audios[0]
    assert rate == 16000 and waveform.dtype == np.float32 and item.target == "HELLO WORLD"
    with pytest.raises(DataError, match="column 'audio': the audio has neither"):
        list(bench.items([libri_row(0, "x", {"bytes": None, "path": None})]))


def test_librispeech_wer_after_whisper_normalization():
    bench = get_benchmark("librispeech")
    audio = {"bytes": b"RIFF", "path": None}
    items = list(bench.items([libri_row(0, "HE WON'T GO TO THE MARKET", audio),
                              libri_row(1, "MISTER SMITH SAID NO", audio)]))
    # "won't" -> "will not" both sides; reference words 7 + 4 = 11 after normalization.
    # Row 1: "Mr. Smith said yes." -> "mister smith said yes": one substitution. WER = 1/11.
    replies = ["<|en|> He won't go to the market.", "Mr. Smith said yes."]
    scores = bench.score(scored(bench, items, replies))
    assert scores["wer"] == pytest.approx(100 / 11)


def test_ids_do_not_depend_on_how_rows_are_batched():
    # The runner asks items() one row at a time; a resumed run must find the same ids.
    sqa = get_benchmark("scienceqa-img")
    rows = [sqa_row("q", ["x", "y"], 0), sqa_row("q", ["x", "y"], 1), sqa_row("other", ["x", "y"], 0)]
    together = [item.id for item in sqa.items(rows)]
    assert together == [next(sqa.items([row])).id for row in rows]
    assert len(set(together)) == 3
    libri = get_benchmark("librispeech")
    wave = {"array": np.ones(160), "sampling_rate": 16000, "path": None}
    named, unnamed = libri.items([libri_row(0, "A", {"bytes": b"x", "path": "1089-0000.flac"}), libri_row(1, "A", wave)])
    assert named.id == "1089-0000.flac"
    assert unnamed.id == next(libri.items([libri_row(1, "A", dict(wave))])).id
    other = next(libri.items([libri_row(1, "A", {**wave, "array": np.zeros(160)})]))
    assert other.id != unnamed.id
