"""The text half of a llama.cpp export: the plain LLM, its tokenizer and a chat template, as one GGUF.

llama.cpp's own converter (convert_hf_to_gguf.py, which knows every architecture's tensor layout
and tokenizer) reads a transformers folder written here; omnilm adds what it alone knows:
- the chat template, rendered as omnilm renders prompts, with the end-of-image text after each
  media marker. llama.cpp's runtime joins a message's parts into one string, each image or audio
  clip as a marker `<__media_...__>` directly before the text after it; omnilm lays an item, its
  end token, then a newline before the text, so the template writes those after each marker.
- an end token that is an ordinary word gets a stand-in special token with the same embedding
  (as the LLaVA export does), so it is never merged with the text that follows.
"""
from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from omnilm.model.gguf_parts import refuse
from omnilm.model.llava_format import IMAGE_END_TOKEN, _literal, default_system, template_body
from omnilm.model.merge import plain_llm

OUTTYPES = ("f32", "f16", "q8_0")
MARKER_END = "__>"  # every llama.cpp media marker ends so: <__media__> (mtmd-cli), <__media_RANDOM__> (server)


class ConversionFailed(RuntimeError):
    """llama.cpp's converter exited with an error (its last lines are in the message)."""


def end_text(tokenizer, llm, end_token_id: int | None) -> str:
    """The text that stands for the end-of-media token, adding a stand-in special token (an
    embedding row copied from the end token) when the end token is an ordinary word."""
    if end_token_id is None:
        return ""
    added = tokenizer.added_tokens_decoder.get(end_token_id)
    if added is not None:
        return added.content
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_END_TOKEN]}, replace_extra_special_tokens=False)
    stand_in = tokenizer.convert_tokens_to_ids(IMAGE_END_TOKEN)
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    inputs, outputs = llm.get_input_embeddings().weight, llm.get_output_embeddings()
    with torch.no_grad():
        inputs[stand_in] = inputs[end_token_id]
        if outputs.weight is not inputs:  # untied: a row that never wins (a tied one equals the end token's)
            outputs.weight[stand_in].zero_()
            if outputs.bias is not None:
                outputs.bias[stand_in] = torch.finfo(outputs.bias.dtype).min / 2
    return IMAGE_END_TOKEN


def chat_template(processor, after_media: str) -> str:
    """Jinja for llama.cpp: omnilm's template, with `after_media` written after each media marker."""
    after = _literal(MARKER_END + after_media)
    return (
        "{%- set ns = namespace(messages=[]) -%}\n"
        + default_system(processor)
        + "{%- for message in messages -%}\n"
        "  {%- if message['content'] is string -%}{%- set text = message['content'] -%}\n"
        "  {%- else -%}{%- set text = message['content'] | map(attribute='text') | join('\\n') -%}{%- endif -%}\n"
        f"  {{%- set text = text | replace({_literal(MARKER_END)}, {after}) -%}}\n"
        "  {%- set ns.messages = ns.messages + [{'role': message['role'], 'content': text}] -%}\n"
        "{%- endfor -%}\n"
        "{%- set messages = ns.messages -%}\n"
        + template_body(processor)
    )


def text_model(model, processor):
    """(the plain float32 LLM, a tokenizer carrying the llama.cpp chat template) of an omnilm model."""
    llm = plain_llm(model.llm, torch.float32)
    tokenizer = copy.deepcopy(processor.tokenizer)
    media = [part for part in (model.recipe.model.image, model.recipe.model.audio) if part is not None]
    ends = {end_text(tokenizer, llm, part.end_token_id) for part in media}
    if len(ends) > 1:  # one template cannot tell an image marker from an audio one
        raise refuse("model.audio.end_token_id", "differs from model.image.end_token_id: llama.cpp's media markers "
                     "do not say which kind of item they stand for", "the same end_token_id for both")
    tokenizer.chat_template = chat_template(processor, (ends.pop() if ends else "") + "\n")
    return llm, tokenizer


def write_text_gguf(llm, tokenizer, out_file: Path, outtype: str, converter: Path) -> Path:
    """Run llama.cpp's converter on a transformers folder of `llm` + `tokenizer`."""
    with tempfile.TemporaryDirectory(prefix="omnilm-gguf-") as folder:
        llm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        done = subprocess.run([sys.executable, str(converter), folder, "--outfile", str(out_file),
                               "--outtype", outtype], capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise ConversionFailed(f"llama.cpp's convert_hf_to_gguf.py failed on the {type(llm).__name__}:\n{tail}")
    return out_file
