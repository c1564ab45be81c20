"""lmms-eval's OpenAI-compatible client evaluates a model served by omnilm, on loopback.

lmms-eval runs in its own virtualenv (scripts/setup.sh makes .venv-lmms; OMNILM_LMMS_PYTHON
points elsewhere): its PyPI torchvision does not load beside the CPU build of torch that omnilm
pins. The test writes one local task (a parquet file with an image column, generate_until,
exact_match), asks the server itself what the tiny model answers each question, makes some
targets those answers, and checks that lmms-eval's scores file holds the score they give.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import SERVED_NAME
from PIL import Image
from test_serve_support import data_url

ROOT = Path(__file__).resolve().parents[1]
LMMS_PYTHON = Path(os.environ.get("OMNILM_LMMS_PYTHON", ROOT / ".venv-lmms" / "bin" / "python"))
TASK = "omnilm_local_vqa"
MAX_NEW_TOKENS = 8
QUESTIONS = [("what colour is the square?", (200, 30, 30)), ("is there a circle?", (30, 200, 30)),
             ("how many shapes are there?", (30, 30, 200))]

pytestmark = pytest.mark.skipif(not LMMS_PYTHON.exists(),
                                reason=f"lmms-eval's virtualenv is missing ({LMMS_PYTHON}): run scripts/setup.sh")

# The task follows lmms-eval's own generate_until tasks (e.g. lmms_eval/tasks/textvqa): a
# visual, a question, greedy decoding, one metric from lmms_eval/api/metrics.py.
TASK_YAML = f"""\
task: {TASK}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {{data}}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {MAX_NEW_TOKENS}
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
TASK_UTILS = """\
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc):
    return doc["question"]
"""


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def served_reply(url: str, question: str, image: bytes) -> str:
    """The request lmms-eval's openai model sends for one document: the image, then the text."""
    import httpx

    body = {"model": SERVED_NAME, "max_tokens": MAX_NEW_TOKENS, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                                      {"type": "text", "text": question}]}]}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def write_task(folder: Path, rows: list[dict]) -> None:
    import datasets

    features = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"),
                                  "image": datasets.Image()})
    data = folder / "data" / "test.parquet"
    data.parent.mkdir(parents=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(data))
    tasks = folder / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(data=data))
    (tasks / "utils.py").write_text(TASK_UTILS)


def run_lmms_eval(url: str, folder: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(folder / "hf-home"),
            "OPENAI_API_KEY": "none", "WANDB_MODE": "disabled", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    command = [str(LMMS_PYTHON), "-m", "lmms_eval", "--model", "openai",
               "--model_args", f"model={SERVED_NAME},base_url={url}/v1,max_retries=1,num_concurrent=2",
               "--tasks", TASK, "--include_path", str(folder / "tasks"), "--batch_size", "1",
               "--log_samples", "--output_path", str(folder / "out")]
    return subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=600)


def only_file(folder: Path, pattern: str, run: subprocess.CompletedProcess) -> Path:
    found = sorted(folder.rglob(pattern))
    assert len(found) == 1, f"expected one {pattern} under {folder}, found {found}; lmms-eval said:\n" \
                            f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return found[0]


@pytest.mark.slow
def test_lmms_eval_scores_a_task_against_the_server(server, tmp_path):
    images = [png(color) for _, color in QUESTIONS]
    replies = [served_reply(server, q, image) for (q, _), image in zip(QUESTIONS, images)]
    # Two targets are the model's own answers, one is not: exact match is 2/3 if every request
    # reached the model and came back unchanged.
    answers = [replies[0], replies[1], replies[2] + " (not the reply)"]
    rows = [{"question": q, "answer": a, "image": {"bytes": image, "path": None}}
            for (q, _), a, image in zip(QUESTIONS, answers, images)]
    write_task(tmp_path, rows)

    run = run_lmms_eval(server, tmp_path)
    # lmms-eval exits 0 after most failures, so the files written are what tells.
    assert run.returncode == 0, run.stderr[-4000:]

    results = json.loads(only_file(tmp_path / "out", "*_results.json", run).read_text())
    assert results["results"][TASK]["exact_match,none"] == pytest.approx(2 / 3)
    samples = [json.loads(line) for line in only_file(tmp_path / "out", f"*_samples_{TASK}.jsonl", run).read_text()
               .splitlines()]
    # "input" is the document's text, "filtered_resps" the reply the metric compared
    by_question = {s["input"]: s["filtered_resps"] for s in samples}
    assert by_question == {q: reply for (q, _), reply in zip(QUESTIONS, replies)}
