"""The quickstart's demo: one held-out test image and question (outside the scored sample),
typed or asked aloud, answered by the trained model."""
from __future__ import annotations

import random
import shutil
from dataclasses import replace
from pathlib import Path

from omnilm.audio.transcribe import make_transcriber
from omnilm.data.audio import load_audio
from omnilm.data.speech import TEST_VOICE, synthesize
from omnilm.eval.runner import generate_texts, last_line, split_prompt
from omnilm.model.saved import load_pretrained
from omnilm.tasks.easyvqa.data import load_easyvqa, to_sample
from omnilm.tasks.easyvqa.evaluation import REPLY_TOKENS
from omnilm.zoo.whisper_ct2 import whisper_ct2_dir

DEMO_SEED = 1


def demo(run_dir: Path, eval_ids: set[str], out: Path, spoken: bool) -> dict:
    """One held-out test image and question (outside the scored sample), asked aloud. The image
    and the clip are copied to <out>/demo/ (image.png, question.wav) for the README's examples."""
    pool = [it for it in load_easyvqa("test") if it.id not in eval_ids]
    item = random.Random(DEMO_SEED).choice(pool)
    (out / "demo").mkdir(parents=True, exist_ok=True)
    image = Path(shutil.copyfile(item.image, out / "demo" / "image.png"))
    record = {"image": str(image), "source": str(item.image), "question": item.question, "expected": item.answer}
    audio = None
    if spoken:
        clip = synthesize([item.question], TEST_VOICE, out / "demo", progress=False)[0]
        audio = Path(shutil.copyfile(clip, out / "demo" / "question.wav"))
        transcriber = make_transcriber("ctranslate2", whisper_ct2_dir())
        record |= {"audio": str(audio), "voice": TEST_VOICE, "transcript": transcriber.transcribe(load_audio(audio))}
    prompt, _ = split_prompt(to_sample(replace(item, image=image), spoken_audio=audio))
    reply = generate_texts(*load_pretrained(run_dir), [prompt], max_new_tokens=REPLY_TOKENS, progress=False)[0]
    record |= {"reply": reply, "answer": last_line(reply)}
    _show(record, spoken)
    return record


def _show(record: dict, spoken: bool) -> None:
    print(f"  image:      {record['image']}")
    if spoken:
        print(f"  question:   spoken by espeak-ng ({TEST_VOICE}): {record['audio']}")
        print(f"  transcript: {record['transcript']}   (Whisper tiny.en via CTranslate2)")
    else:
        print(f"  question:   {record['question']}")
    print(f"  reply:      {record['reply']!r}")
    print(f"  answer:     {record['answer']}   (expected: {record['expected']})")
