"""Several images in one turn: data sources keep them in marker order, and a tiny model trained to
name the first or the second image's colour answers from the right one, through chat and serve."""
import json

import httpx
import pytest
import torch
from PIL import Image
from test_serve_support import data_url, free_port, png_bytes, running_server

from tests.conftest import CONFIGS

from omnilm.chat import ChatSession
from omnilm.config import DataConfig, load_recipe
from omnilm.core.sample import Message, Sample
from omnilm.data.collate import collate
from omnilm.data.sources import load_samples
from omnilm.errors import DataError
from omnilm.generation_settings import GenerationSettings
from omnilm.model.build import build_model, build_processor
from omnilm.serve.api import ServerState, create_app
from omnilm.serve.engine import Engine
from omnilm.serve.limits import Limits
from omnilm.training.stages import apply_stage

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "yellow": (230, 220, 20)}
ASK = {"1": 0, "2": 1}  # question -> which image's colour is the answer


@pytest.fixture(scope="module")
def colour_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("colours")
    for name, rgb in COLOURS.items():
        Image.new("RGB", (32, 32), rgb).save(folder / f"{name}.png")
    return {name: str(folder / f"{name}.png") for name in COLOURS}


def write_llava_rows(folder, rows):
    (folder / "rows.json").write_text(json.dumps(rows))
    return DataConfig(source="llava", path=str(folder / "rows.json"), image_dir=str(folder))


def test_llava_json_takes_a_list_of_images_in_marker_order(colour_files, tmp_path):
    rows = [{"id": "marked", "image": [colour_files["red"], colour_files["blue"]],
             "conversations": [{"from": "human", "value": "<image> then <image>"}, {"from": "gpt", "value": "ok"}]},
            {"id": "unmarked", "image": [colour_files["green"], colour_files["yellow"]],
             "conversations": [{"from": "human", "value": "which?"}, {"from": "gpt", "value": "ok"}]}]
    marked, unmarked = load_samples(write_llava_rows(tmp_path, rows)).samples
    assert marked.images == [colour_files["red"], colour_files["blue"]]
    assert marked.messages[0].content == "<image> then <image>"
    assert unmarked.images == [colour_files["green"], colour_files["yellow"]]
    assert unmarked.messages[0].content == "<image>\n<image>\nwhich?"  # a marker per image, in their order


def test_hf_trl_rows_keep_the_images_list_in_order(colour_files, tmp_path):
    from datasets import Dataset

    rows = [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"},
                                                       {"type": "image"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}],
             "images": [colour_files["yellow"], colour_files["red"]]}]
    Dataset.from_list(rows).to_json(str(tmp_path / "trl.jsonl"))
    (sample,) = load_samples(DataConfig(source="hf", path=str(tmp_path / "trl.jsonl"))).samples
    assert [str(p) for p in sample.images] == [colour_files["yellow"], colour_files["red"]]
    assert sample.messages[0].content.count("<image>") == 2


def test_a_row_with_fewer_markers_than_images_is_named(colour_files, tmp_path):
    rows = [{"id": "short", "image": [colour_files["red"], colour_files["blue"]],
             "conversations": [{"from": "human", "value": "<image> which?"}, {"from": "gpt", "value": "ok"}]}]
    cfg = write_llava_rows(tmp_path, rows)
    processor = build_processor(tiny_recipe_for(tmp_path))
    (sample,) = load_samples(cfg).samples
    with pytest.raises(DataError, match="sample short: 2 image inputs but 1 <image> markers in the text"):
        processor(sample)


def tiny_recipe_for(tmp_path):
    """The tiny random model with the plain template (the chat and server prompts' layout)."""
    return load_recipe(CONFIGS / "tiny-stage1.yaml", {"train": {"output_dir": str(tmp_path / "run")},
                                                     "data": {"template": "plain"}})


def two_image_samples(colour_files):
    """Every ordered pair of different colours, asked for image 1 and for image 2."""
    out = []
    for first in COLOURS:
        for second in COLOURS:
            if first == second:
                continue
            for question, which in ASK.items():
                answer = (first, second)[which]
                out.append(Sample([Message("user", f"<image>\n<image>\n{question}"), Message("assistant", answer)],
                                  images=[colour_files[first], colour_files[second]]))
    return out


@pytest.fixture(scope="module")
def trained(colour_files, tmp_path_factory):
    """The tiny model (LLM and projector trained, encoder frozen) overfit on two-image questions."""
    model, processor = build_model(tiny_recipe_for(tmp_path_factory.mktemp("multi")))
    apply_stage(model, "finetune")
    batch = collate([processor(s) for s in two_image_samples(colour_files)], processor.tokenizer.pad_token_id)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    with torch.no_grad():  # the frozen encoder's features do not change between steps
        features = {"image": model.encoders["image"](batch.media["image"])}
    for _ in range(300):
        loss = model(batch.input_ids, batch.attention_mask, batch.labels, features=features).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    return model.eval(), processor


def answer(session, images, question):
    session.reset()
    return "".join(session.ask(question, images=images)).strip()


def test_swapping_two_images_swaps_the_answer_in_chat(trained, colour_files):
    session = ChatSession(*trained, GenerationSettings(max_new_tokens=8))
    red_blue = [colour_files["red"], colour_files["blue"]]
    assert answer(session, red_blue, "1") == "red"
    assert answer(session, red_blue[::-1], "1") == "blue"  # the order is kept
    assert answer(session, red_blue, "2") == "blue"  # the second image is not ignored
    assert answer(session, red_blue[::-1], "2") == "red"


def test_pending_images_and_a_later_turn_keep_their_order(trained, colour_files):
    session = ChatSession(*trained, GenerationSettings(max_new_tokens=8))
    session.attach("image", colour_files["green"])  # /image in the REPL
    session.attach("image", colour_files["yellow"])
    assert "".join(session.ask("1")).strip() == "green"
    assert session.last_sample.images == [colour_files["green"], colour_files["yellow"]]


def test_the_server_keeps_the_order_of_image_parts(trained):
    engine = Engine(*trained, Limits(max_new_tokens=8)).start()
    try:
        with running_server(create_app(ServerState(engine, "tiny")), free_port()) as url:
            def ask(first, second, question):
                parts = [{"type": "image_url", "image_url": {"url": data_url(png_bytes(COLOURS[c], (32, 32)))}}
                         for c in (first, second)]
                body = {"model": "tiny", "max_tokens": 8, "temperature": 0,
                        "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]}
                reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
                assert reply.status_code == 200, reply.text
                return reply.json()["choices"][0]["message"]["content"].strip()

            assert [ask("green", "red", "1"), ask("red", "green", "1"), ask("green", "red", "2")] == \
                   ["green", "red", "red"]
    finally:
        engine.close()
