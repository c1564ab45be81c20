"""`omnilm export --format gguf`: llama.cpp (built from source by scripts/llama_cpp.sh) answers as omnilm does.

Each exported model is served by llama-server on 127.0.0.1 and asked the same image question as
omnilm: the greedy replies must be equal and the first token's top-5 log-probabilities close
(measured: within 2e-3; llama.cpp's float32 kernels and tanh-GELU against omnilm's exact GELU)."""
import pytest
import torch
from transformers import AutoTokenizer

from omnilm.cli import main
from omnilm.core.sample import Message, Sample
from omnilm.data.fixtures import draw_shape
from omnilm.model.export import export
from omnilm.model.gguf_format import NotExpressibleInGGUF
from omnilm.model.saved import load_pretrained
from omnilm.zoo.smollm2 import smollm2_folder
from tests.llama_server import chat, image_part, llama_server
from tests.test_export_llava import TINY_CLIP, TINY_SIGLIP, tiny_run

QUESTION = "What colour is the shape?"
LOGPROB_TOLERANCE = 1e-2
NEW_TOKENS = 6


def tiny_llm(model_type: str) -> dict:
    """A tiny random LLM over SmolLM2's real tokenizer (llama.cpp's converter needs a known one)."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    config = {"model_type": model_type, "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 512,
              "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.eos_token_id, "initializer_range": 0.2}
    if model_type == "llama":
        config.update(num_key_value_heads=2, tie_word_embeddings=True)
    else:  # llama.cpp's converter writes Phi's feed-forward width as 4 x hidden, as Phi-2 has it
        config.update(intermediate_size=256)
    return config


def gguf_run(folder, llm="llama", template="plain", **image):
    return tiny_run(folder, llm=tiny_llm(llm), tokenizer=smollm2_folder(), template=template,
                    image={"end_token_id": 0, **image})


def omnilm_reply(model, processor, image) -> tuple[str, dict[str, float]]:
    """(greedy reply, first token's top-5 log-probabilities by token text)."""
    encoded = processor.encode_prompt(Sample([Message("user", f"<image>\n{QUESTION}")], images=[image]))
    ids = encoded.input_ids[None]
    with torch.no_grad():
        logits = model(input_ids=ids, media=encoded.media).logits[0, -1].float()
        tokens = model.generate(ids, torch.ones_like(ids), media=encoded.media, max_new_tokens=NEW_TOKENS,
                                do_sample=False)[0]
    top = torch.log_softmax(logits, -1).topk(5)
    decode = processor.tokenizer.decode
    return decode(tokens), {decode([i]): v for v, i in zip(top.values.tolist(), top.indices.tolist())}


def llama_cpp_reply(folder, image, log) -> tuple[str, dict[str, float]]:
    name = f"{folder.name}-f32"
    with llama_server(folder / f"{name}.gguf", folder / f"mmproj-{name}.gguf", log) as url:
        reply = chat(url, [image_part(image), {"type": "text", "text": QUESTION}], max_tokens=NEW_TOKENS)
    return reply["text"], {c["token"]: c["logprob"] for c in reply["logprobs"][0]["top_logprobs"]}


def assert_same(ours, theirs):
    (text, top), (their_text, their_top) = ours, theirs
    assert their_text == text
    assert list(their_top) == list(top)
    assert max(abs(their_top[t] - top[t]) for t in top) < LOGPROB_TOLERANCE


@pytest.mark.parametrize("llm, template, layer", [("llama", "plain", -2), ("phi", "chat", -1), ("llama", "phi", 2)])
def test_siglip_export_answers_as_omnilm_does(tmp_path, llm, template, layer):
    """-1 is SigLIP's output after its post-layernorm (the mmproj then carries the norm), 2 a middle layer."""
    run = gguf_run(tmp_path / "run", llm, template, type="siglip", random_config=TINY_SIGLIP, layer=layer)
    assert main(["export", "--format", "gguf", "--outtype", "f32", "--model", str(run),
                 "--out", str(tmp_path / "gguf")]) == 0
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir()) == [
        "Modelfile", "README.md", "gguf-f32.gguf", "mmproj-gguf-f32.gguf"]
    image = draw_shape("red", "circle", size=TINY_SIGLIP["image_size"], seed=3)  # the tower's size: no resampling
    assert_same(omnilm_reply(*load_pretrained(run), image), llama_cpp_reply(tmp_path / "gguf", image, tmp_path / "log"))


def llama_cpp_view(encoder):
    """The image tokens llama.cpp's mlp graph reads from a CLIP tower: patches 1..N-1, then the class token."""
    forward = encoder.forward
    encoder.drop_cls = False

    def reordered(inputs):
        return [torch.cat([hidden[2:], hidden[:1]]) for hidden in forward(inputs)]  # [1 + P, D] -> [P, D]

    encoder.forward = reordered


@pytest.mark.parametrize("layer", [-1, -2])
def test_clip_export_computes_the_tower_exactly_and_says_what_differs(tmp_path, layer):
    run = gguf_run(tmp_path / "run", type="clip", random_config=TINY_CLIP, layer=layer, drop_cls=True)
    model, processor = load_pretrained(run)
    with pytest.raises(NotExpressibleInGGUF, match="model.image.type: clip.*--approximate-clip"):
        export(model, processor, tmp_path / "gguf", "gguf", outtype="f32")
    assert not (tmp_path / "gguf").exists()
    export(model, processor, tmp_path / "gguf", "gguf", outtype="f32", approximate_clip=True)
    image = draw_shape("blue", "square", size=TINY_CLIP["image_size"], seed=1)
    theirs = llama_cpp_reply(tmp_path / "gguf", image, tmp_path / "log")
    llama_cpp_view(model.encoders["image"])  # what llama.cpp reads, computed by transformers' CLIP
    assert_same(omnilm_reply(model, processor, image), theirs)


@pytest.mark.parametrize("image, setting", [
    ({"projector": {"type": "resblock"}}, "model.image.projector.type"),
    ({"projector": {"type": "mlp2x_gelu", "tokens_per_feature": 2}}, "model.image.projector.tokens_per_feature"),
    ({"projector": {"type": "mlp2x_gelu", "pixel_shuffle": 2}}, "model.image.projector.pixel_shuffle"),
    ({"tiling": "anyres"}, "model.image.tiling"),
])
def test_what_llama_cpp_cannot_express_is_refused_before_anything_is_written(tmp_path, image, setting):
    run = gguf_run(tmp_path / "run", **image)
    with pytest.raises(NotExpressibleInGGUF, match=f"cannot export to GGUF: {setting}.*nearest exportable choice"):
        export(*load_pretrained(run), tmp_path / "gguf", "gguf")
    assert not (tmp_path / "gguf").exists()


@pytest.mark.parametrize("outtype, text_type", [("f16", "MOSTLY_F16"), ("q8_0", "MOSTLY_Q8_0")])
def test_smaller_outtypes_load_and_stay_close(tmp_path, outtype, text_type):
    """f16 and q8_0 text models (with an f16 mmproj) load in llama-server; their first-token
    log-probabilities stay near omnilm's float32 ones (rounding, so no equality asked)."""
    import gguf

    run = gguf_run(tmp_path / "run", type="siglip", random_config=TINY_SIGLIP, layer=-2)
    model, processor = load_pretrained(run)
    out = export(model, processor, tmp_path / "gguf", "gguf", outtype=outtype)
    name = f"gguf-{outtype}"
    file_type = gguf.GGUFReader(out / f"{name}.gguf").fields["general.file_type"]
    assert gguf.LlamaFileType(int(file_type.parts[-1][0])).name == text_type
    mmproj = gguf.GGUFReader(out / f"mmproj-{name}.gguf")
    assert {t.tensor_type.name for t in mmproj.tensors if t.name.endswith("attn_q.weight")} == {"F16"}
    image = draw_shape("green", "triangle", size=TINY_SIGLIP["image_size"], seed=2)
    _, top = omnilm_reply(model, processor, image)
    # llama.cpp 0.3.36 crashes repacking q8_0 weights on CPUs with AMX (this Xeon), for its own
    # converter's files too: q8_0 is served without repacking (README says so)
    extra = ("--no-repack",) if outtype == "q8_0" else ()
    with llama_server(out / f"{name}.gguf", out / f"mmproj-{name}.gguf", tmp_path / "log", extra=extra) as url:
        reply = chat(url, [image_part(image), {"type": "text", "text": QUESTION}], max_tokens=1)
    theirs = {c["token"]: c["logprob"] for c in reply["logprobs"][0]["top_logprobs"]}
    shared = set(top) & set(theirs)
    assert len(shared) >= 3
    assert max(abs(theirs[t] - top[t]) for t in shared) < 0.25


def test_one_mmproj_with_image_and_audio_answers_a_request_with_both(tmp_path):
    """A SigLIP tower and Whisper tiny.en's real encoder (ultravox projector) in one mmproj: an
    image, a real speech clip and a question in one message get omnilm's greedy reply."""
    import yaml

    from omnilm.config import load_recipe
    from omnilm.model.build import build_model
    from tests.llama_server import audio_part
    from tests.test_gguf_audio import CLIP, ULTRAVOX, _tiny_llm

    recipe = {"model": {"llm": {"name_or_path": str(_tiny_llm(tmp_path / "llm")), "dtype": "float32"},
                        "image": {"type": "siglip", "random_config": TINY_SIGLIP, "layer": -2,
                                  "projector": {"type": "mlp2x_gelu"}},
                        "audio": {"type": "whisper", "name_or_path": "zoo:whisper-tiny.en", "max_seconds": 29.0,
                                  **ULTRAVOX}},
              "data": {"template": "chat", "max_length": 1024}, "train": {"output_dir": str(tmp_path / "run")}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    model, processor = build_model(load_recipe(tmp_path / "recipe.yaml"))
    model.eval()
    image = draw_shape("yellow", "circle", size=TINY_SIGLIP["image_size"], seed=4)
    encoded = processor.encode_prompt(Sample([Message("user", f"<image>\n<audio>\n{QUESTION}")], images=[image],
                                             audios=[CLIP]))
    ids = encoded.input_ids[None]
    with torch.no_grad():
        tokens = model.generate(ids, torch.ones_like(ids), media=encoded.media, max_new_tokens=NEW_TOKENS,
                                do_sample=False)[0]
    out = export(model, processor, tmp_path / "both", "gguf", outtype="f32")
    with llama_server(out / "both-f32.gguf", out / "mmproj-both-f32.gguf", tmp_path / "log") as url:
        reply = chat(url, [image_part(image), audio_part(CLIP.read_bytes()), {"type": "text", "text": QUESTION}],
                     max_tokens=NEW_TOKENS)
    assert len(tokens) == NEW_TOKENS and reply["text"] == processor.tokenizer.decode(tokens)
