"""Export to llama.cpp: a text-model GGUF and one `mmproj-*.gguf` for the image and audio encoders.

`export_gguf` writes, into one folder (whole or not at all):
- `NAME-OUTTYPE.gguf`: the LLM (LoRA merged, 4-bit dequantized), its tokenizer and a chat template
  (omnilm.model.gguf_text, through llama.cpp's own converter);
- `mmproj-NAME-OUTTYPE.gguf`: the image tower + `mlp` projector (omnilm.model.gguf_vision) and/or
  the Whisper encoder + `ultravox` projector (omnilm.model.gguf_audio), in one file as llama.cpp's
  mixed-modality mmproj files are;
- `Modelfile` for Ollama and a model card.
What llama.cpp cannot express is refused before any work, naming the setting and the nearest
exportable choice. llama.cpp's converter comes from the build of scripts/llama_cpp.sh (omnilm.llama_cpp).
"""
from __future__ import annotations

from pathlib import Path

from omnilm.errors import OmniError
from omnilm.model.gguf_parts import NotExpressibleInGGUF, refuse  # noqa: F401 (the export's error)

WEIGHT_TYPES = {"f32": "f32", "f16": "f16", "q8_0": "f16"}  # text outtype -> the mmproj's (llama.cpp's usual pair)




def check(model, approximate_clip: bool = False) -> None:
    """Everything that can be refused, refused before any work."""
    from omnilm.model.gguf_vision import check_vision

    media = model.recipe.model
    if media.image is None and media.audio is None:
        raise refuse("model", "no image or audio encoder: a text-only model needs no mmproj",
                     "llama.cpp's convert_hf_to_gguf.py on `omnilm export` output")
    if media.image is not None:
        check_vision(model, approximate_clip)
    if media.audio is not None:
        from omnilm.model.gguf_audio import check_audio

        check_audio(model)


def export_gguf(model, processor, out, outtype: str = "f16", card=None, approximate_clip: bool = False) -> Path:
    """Write the text GGUF, the mmproj GGUF and a Modelfile into `out`. `approximate_clip`: export a
    CLIP tower although llama.cpp reads its class token in place of the first patch (gguf_vision)."""
    from omnilm import llama_cpp
    from omnilm.files import atomic_folder
    from omnilm.model.gguf_text import OUTTYPES, text_model, write_text_gguf

    if outtype not in OUTTYPES:
        raise OmniError(f"--outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    check(model, approximate_clip)
    converter = llama_cpp.converter()
    out = Path(out)
    name = f"{out.name}-{outtype}"
    llm, tokenizer = text_model(model, processor)
    size = sum(p.numel() for p in model.parameters()) * 4
    with atomic_folder(out, size) as tmp:
        write_text_gguf(llm, tokenizer, tmp / f"{name}.gguf", outtype, converter)
        write_mmproj(model, processor, tmp / f"mmproj-{name}.gguf", llm.get_input_embeddings().embedding_dim,
                     WEIGHT_TYPES[outtype])
        (tmp / "Modelfile").write_text(modelfile(name))
        if card is not None:
            card(tmp)
    return out


def write_mmproj(model, processor, path: Path, llm_width: int, weight_type: str) -> Path:
    import gguf

    from omnilm.model.gguf_vision import PROJECTOR_TYPE as VISION_PROJECTOR, write_vision

    media = model.recipe.model
    writer = gguf.GGUFWriter(str(path), arch="clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if weight_type == "f16" else gguf.LlamaFileType.ALL_F32)
    writer.add_name(f"omnilm {path.stem}")
    writer.add_clip_has_vision_encoder(media.image is not None)
    writer.add_clip_has_audio_encoder(media.audio is not None)
    if media.image is not None:
        writer.add_clip_vision_projector_type(VISION_PROJECTOR)
        write_vision(writer, model, processor, llm_width, weight_type)
    if media.audio is not None:
        from omnilm.model.gguf_audio import PROJECTOR_TYPE as AUDIO_PROJECTOR, write_audio

        writer.add_clip_audio_projector_type(AUDIO_PROJECTOR)
        write_audio(writer, model, llm_width, weight_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def modelfile(name: str) -> str:
    """Ollama's Modelfile: the text model and its projector, side by side in this folder."""
    return (f"# ollama create {name} -f Modelfile\n"
            f"FROM ./{name}.gguf\nFROM ./mmproj-{name}.gguf\nPARAMETER temperature 0\n")
