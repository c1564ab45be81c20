"""The ultravox audio projector, llama.cpp's whole-window Whisper input (pad_to_window), the audio half
of the GGUF mmproj (omnilm.model.gguf_audio), and llama-server hearing a clip as omnilm does."""
from __future__ import annotations

import copy
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import yaml
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, WhisperFeatureExtractor

from omnilm.config import load_recipe
from omnilm.core.sample import PLACEHOLDER_IDS, Message, Sample
from omnilm.errors import ConfigError
from omnilm.model.audio_features import window_padded_log_mel
from omnilm.model.build import build_model
from omnilm.model.gguf_audio import check_audio, write_audio
from omnilm.model.gguf_format import NotExpressibleInGGUF, export_gguf
from omnilm.model.projector import UltravoxProjector, build_projector
from omnilm.training.loop import train
from omnilm.zoo.smollm2 import smollm2_folder
from tests.conftest import CONFIGS
from tests.llama_server import audio_part, chat, llama_server

SR = 16000
CLIP = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav")  # 2.99 s
ULTRAVOX = {"projector": {"type": "ultravox"}, "pad_to_window": True, "stack_frames": 10, "end_token_id": None}


def ultravox_recipe(tmp_path, **audio):
    return load_recipe(CONFIGS / "tiny-audio.yaml", {
        "data": {"max_length": 1024},
        "model": {"llm": {"random_config": {"max_position_embeddings": 1024}}, "audio": {**ULTRAVOX, **audio}},
        "train": {"output_dir": str(tmp_path / "run")}})


# ---- the projector ---------------------------------------------------------------------------

def _rms_norm(x, weight):  # ggml_rms_norm(x, 1e-6) * weight
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * weight


def test_ultravox_projector_is_llama_cpps_graph():
    """whisper-enc.cpp: rms_norm * w, mul_mat, swiglu_swapped (silu of the SECOND half times the
    first), rms_norm * w, mul_mat; written here in numpy from that graph, not from the module."""
    torch.manual_seed(0)
    net = UltravoxProjector(12, 5, hidden=8)
    for norm in (net.ln_pre, net.ln_mid):  # non-trivial norm weights, so they are tested too
        torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = torch.randn(7, 12)
    p = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    assert sorted(p) == ["linear_1.weight", "linear_2.weight", "ln_mid.weight", "ln_pre.weight"]  # no biases
    h = _rms_norm(x.numpy(), p["ln_pre.weight"]) @ p["linear_1.weight"].T  # [7, 8]
    first, second = h[:, :4], h[:, 4:]
    h = first * (second / (1 + np.exp(-second)))  # [7, 4]
    want = _rms_norm(h, p["ln_mid.weight"]) @ p["linear_2.weight"].T  # [7, 5]
    with torch.no_grad():
        got = net(x)
    assert got.shape == (7, 5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_ultravox_stacks_frames_and_checks_its_width():
    net = build_projector("ultravox", 32, 64, stack=10)
    assert net.inner.linear_1.weight.shape == (128, 320)  # d_enc * k -> twice the LLM width
    assert net([torch.randn(1500, 32), torch.randn(25, 32)]).shape == (150 + 3, 64)
    with pytest.raises(ConfigError, match="hidden_size must be even.*got 9; try 10"):
        build_projector("ultravox", 32, 64, hidden=9)
    with pytest.raises(ConfigError, match=r"model.audio.projector.hidden_size = 7: .* try 8"):
        ultravox_recipe(Path("/tmp"), projector={"type": "ultravox", "hidden_size": 7})


def test_ultravox_recipe_trains(tiny_data, tmp_path):
    recipe = ultravox_recipe(tmp_path)
    recipe.data.path = str(tiny_data["root"] / "asr" / "manifest.jsonl")
    recipe.train.max_steps, recipe.train.log_every = 20, 5
    result = train(recipe, progress=False)
    assert result.losses[-1] < result.losses[0]


# ---- whole windows, as llama.cpp cuts them ---------------------------------------------------

def test_window_padded_log_mel_counts_windows_as_llama_cpp():
    extractor = WhisperFeatureExtractor(feature_size=80)
    rng = np.random.default_rng(0)
    # llama.cpp: floor(N / 160) + 3001 mel frames, in whole 3,000-frame chunks (a second from 29.99 s)
    for seconds, windows in ((0.01, 1), (2.0, 1), (29.98, 1), (29.99, 2), (45.0, 2), (60.0, 3)):
        wave = 0.1 * rng.standard_normal(round(seconds * SR)).astype(np.float32)
        assert window_padded_log_mel(extractor, wave, 3000).shape == (80, windows * 3000), seconds


def test_window_padded_log_mel_is_whisper_but_for_the_silence_floor():
    """The clip's frames are Whisper's own 30-s features; the silence after it sits at log10(2^-24)
    (llama.cpp's floor) where that is above Whisper's max - 8, not at Whisper's max - 8."""
    extractor = WhisperFeatureExtractor(feature_size=80)
    wave = 0.1 * np.random.default_rng(1).standard_normal(2 * SR).astype(np.float32)
    ours = window_padded_log_mel(extractor, wave, 3000).numpy()
    whisper = extractor(wave, sampling_rate=SR, return_tensors="np").input_features[0]  # padded to 30 s
    np.testing.assert_allclose(ours[:, :195], whisper[:, :195], atol=1e-4)  # 2 s = 200 frames, minus the edge
    top = np.log10(2.0**-24)  # silence after llama.cpp's floor
    silence = (max(top, 4 * whisper.max() - 4 - 8) + 4) / 4
    np.testing.assert_allclose(ours[:, 400:], silence, atol=1e-5)
    assert whisper[0, 400] < silence - 0.1  # Whisper's silence is lower: the floor matters


def test_pad_to_window_sets_the_token_count(tmp_path):
    model, processor = build_model(ultravox_recipe(tmp_path))
    for seconds, tokens in ((1.0, 150), (7.3, 150)):
        wave = 0.1 * np.random.default_rng(0).standard_normal(int(seconds * SR)).astype(np.float32)
        enc = processor.encode_prompt(Sample([Message("user", "<audio>hi")], audios=[wave]))
        assert int((enc.input_ids == PLACEHOLDER_IDS["audio"]).sum()) == tokens  # 1,500 frames / 10
    with pytest.raises(ConfigError, match="model.image.pad_to_window: for whisper encoders only"):
        load_recipe(CONFIGS / "tiny-stage1.yaml", {"model": {"image": {"pad_to_window": True}}})


# ---- what the export refuses, and what it writes ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_ultravox(tmp_path_factory):
    return build_model(ultravox_recipe(tmp_path_factory.mktemp("uvx")))[0]


def _with(model, projector=None, **settings):
    changed = copy.copy(model)
    changed.config = copy.deepcopy(model.config)
    changed.config.audio.update(settings)
    changed.config.audio["projector"].update(projector or {})
    return changed


@pytest.mark.parametrize("settings, message", [
    ({"projector": {"type": "mlp2x_gelu"}}, r"model.audio.projector.type: .* nearest exportable choice: ultravox"),
    ({"projector": {"tokens_per_feature": 2}}, r"tokens_per_feature: .* choice: 1"),
    ({"pad_to_window": False}, r"model.audio.pad_to_window: llama.cpp pads .* choice: pad_to_window: true"),
    ({"stack_frames": 8}, r"stack_frames: llama.cpp's graph makes ceil\(1500 / 8\) .* aborts; nearest .*: 6"),
    ({"stack_frames": 16, "max_seconds": 60.0}, r"stack_frames: 16 does not divide .* choice: 15, or max_seconds"),
])
def test_check_audio_refuses_what_llama_cpp_runs_differently(tiny_ultravox, settings, message):
    with pytest.raises(NotExpressibleInGGUF, match=message):
        check_audio(_with(tiny_ultravox, **settings))


def test_check_audio_takes_what_llama_cpp_runs_alike(tiny_ultravox):
    check_audio(tiny_ultravox)
    check_audio(_with(tiny_ultravox, stack_frames=16, max_seconds=29.0))  # one window: 94 tokens in both


def test_write_audio_names_and_types(tiny_ultravox, tmp_path):
    path = tmp_path / "mmproj.gguf"
    writer = gguf.GGUFWriter(str(path), "clip")
    write_audio(writer, tiny_ultravox, 64, "f16")
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert len(tensors) == 4 + 1 + 2 + 2 * 15 + 4  # convs, positions, post_ln, 2 blocks (k has no bias), projector
    assert kinds["a.conv1d.1.weight"] == "F16" and list(tensors["a.conv1d.1.weight"].shape) == [3, 80, 32]
    assert kinds["a.conv1d.2.bias"] == "F32" and list(tensors["a.conv1d.2.bias"].shape) == [1, 32]
    assert kinds["a.blk.1.attn_q.weight"] == "F16" and kinds["a.blk.1.ln2.bias"] == "F32"
    assert list(tensors["mm.a.mlp.1.weight"].shape) == [320, 128] and "mm.a.mlp.1.bias" not in tensors
    assert kinds["mm.a.norm_mid.weight"] == "F32" and list(tensors["mm.a.mlp.2.weight"].shape) == [64, 64]
    fields = {name: field.contents() for name, field in reader.fields.items() if name.startswith("clip.audio.")}
    assert fields == {"clip.audio.projection_dim": 64, "clip.audio.embedding_length": 32,
                      "clip.audio.feed_forward_length": 64, "clip.audio.block_count": 2,
                      "clip.audio.attention.head_count": 2, "clip.audio.attention.layer_norm_epsilon": float(np.float32(1e-5)),
                      "clip.audio.num_mel_bins": 80, "clip.audio.projector.stack_factor": 10}


# ---- llama-server hears what omnilm heard ----------------------------------------------------

PROMPT = "What is said?"
STEPS = 8


def _tiny_llm(folder: Path) -> Path:
    """A random 2-layer Llama with SmolLM2's real tokenizer and chat template; init 0.2 so that its
    greedy choices have margins well above llama.cpp's rounding (measured: >= 0.1 nats)."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _native(model, processor):
    """omnilm's greedy tokens, their log-probabilities and the clip's audio embeddings. omnilm lays
    the clip, then a newline, then the text, as the exported chat template does after a marker."""
    encoded = processor.encode_prompt(Sample([Message("user", "<audio>\n" + PROMPT)], audios=[CLIP]))
    ids, logprobs = encoded.input_ids, []
    with torch.no_grad():
        embeddings = model.media_features("audio", encoded.media["audio"], None)  # [150, d_llm]
        for _ in range(STEPS):
            step = torch.log_softmax(model(ids[None], media=encoded.media).logits[0, -1].float(), -1)
            logprobs.append(float(step.max()))
            ids = torch.cat([ids, step.argmax()[None]])
    return ids[len(encoded.input_ids):].tolist(), logprobs, embeddings


def test_llama_server_hears_the_clip_as_omnilm_does(tmp_path, monkeypatch):
    """Whisper tiny.en's real encoder + a random ultravox projector + a tiny LLM, exported (f32) by
    export_gguf: llama-server's greedy reply to a real 2.99-s speech clip is omnilm's, token for token."""
    recipe = {"model": {"llm": {"name_or_path": str(_tiny_llm(tmp_path / "llm")), "dtype": "float32"},
                        "audio": {"type": "whisper", "name_or_path": "zoo:whisper-tiny.en", "max_seconds": 29.0,
                                  **ULTRAVOX}},
              "data": {"template": "chat", "max_length": 1024}, "train": {"output_dir": str(tmp_path / "run")}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    model, processor = build_model(load_recipe(tmp_path / "recipe.yaml"))
    model.eval()
    tokens, logprobs, embeddings = _native(model, processor)

    folder = export_gguf(model, processor, tmp_path / "tiny", outtype="f32")
    dump = tmp_path / "audio.bin"
    monkeypatch.setenv("MTMD_DEBUG_EMBEDDINGS", str(dump))  # clip.cpp writes the audio embeddings it made there
    with llama_server(folder / "tiny-f32.gguf", folder / "mmproj-tiny-f32.gguf", tmp_path / "server.log") as url:
        reply = chat(url, [audio_part(CLIP.read_bytes()), {"type": "text", "text": PROMPT}], max_tokens=STEPS)
    assert reply["text"] == processor.tokenizer.decode(tokens)  # the same 8 greedy tokens
    # Measured: at most ~0.015 nats apart (ggml's conv_1d runs its im2col in F16; text alone ~0.002).
    np.testing.assert_allclose([step["logprob"] for step in reply["logprobs"]], logprobs, atol=0.05)
    n, d = np.fromfile(dump, dtype=np.int32, count=2)
    dumped = torch.from_numpy(np.fromfile(dump, dtype=np.float32)[2:].reshape(n, d))
    relative = (dumped - embeddings).norm(dim=1) / embeddings.norm(dim=1)  # per audio token
    assert (n, d) == tuple(embeddings.shape) and float(relative.max()) < 2e-3  # measured ~6e-4
