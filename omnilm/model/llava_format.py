"""Export to transformers' LLaVA format.

`export_llava` writes a `LlavaForConditionalGeneration` folder (config, weights, processor,
chat template, model card) that transformers, vLLM, SGLang and TGI load. The other direction (a
LLaVA checkpoint as `model.init_from`) is omnilm.model.llava_source.

LLaVA's model is fixed: a CLIP/SigLIP tower, one hidden layer of it (`vision_feature_layer`), the
CLS token kept or dropped (`vision_feature_select_strategy`), linear -> GELU -> linear, and one
`<image>` token per feature. What omnilm can do beyond that (other projectors, audio, EfficientNet,
several tokens per feature) is refused with the reason, never written approximately. The seed's
"end of image" token after each image is written by the chat template, so every LLaVA loader
that applies it (transformers' processor, vLLM's chat API) sees the same tokens omnilm trained on.

Weights are written with the key names of the public llava-hf checkpoints (`vision_tower.vision_model.*`,
`multi_modal_projector.linear_1/2.*`, `language_model.model.*`, `language_model.lm_head.*`): the
layout every vLLM release reads and transformers 4 and 5 convert on load.
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from omnilm.errors import OmniError
from omnilm.model.llava_source import LLM_PREFIX, PROJECTOR_LAYERS, TOWER_PREFIX
from omnilm.model.merge import plain_llm

IMAGE_TOKEN = "<image>"  # what LlavaProcessor expands, and vLLM's placeholder for llava
IMAGE_END_TOKEN = "<|image_end|>"  # stands for an end-of-image token that is an ordinary word
LLAVA_PROJECTORS = ("mlp2x_gelu", "mlp")


class NotExpressible(OmniError):
    """The model does something transformers' LLaVA cannot: the export would answer differently."""


def refuse(setting: str, reason: str, nearest: str) -> NotExpressible:
    return NotExpressible(f"cannot export to LLaVA format: {setting}: {reason}; nearest exportable choice: {nearest}")


# ---------------------------------------------------------------------------------------------
# omnilm -> LLaVA


@dataclass
class VisionChoice:
    """How the image encoder's features map onto LLaVA's config fields."""

    feature_layer: int
    select_strategy: str  # "default" drops the first (CLS) token, "full" keeps all
    additional_tokens: int  # tokens the tower adds to the patches (CLIP's CLS)


def vision_choice(recipe, encoder) -> VisionChoice:
    """The image settings as LLaVA config values, or the reason they have none."""
    model = recipe.model
    if model.audio is not None:
        raise refuse("model.audio", f"LLaVA models take images only, not a {model.audio.type} audio encoder",
                     "`omnilm export` without --format (omnilm's own folder), or a recipe without model.audio")
    image = model.image
    if image is None:
        raise refuse("model.image", "LLaVA needs an image encoder", "a recipe with model.image (clip or siglip)")
    check_mlp_image(image, refuse, "LLaVA")
    if image.type == "siglip" and image.layer == -1:  # omnilm's -1 is SigLIP's output after its post-layernorm
        layers = encoder.tower.config.num_hidden_layers
        raise refuse("model.image.layer", "-1 with SigLIP is the output after SigLIP's post-layernorm, which "
                     "LLaVA's vision_feature_layer cannot select",
                     f"layer: {layers} (the last layer, before that norm) or -2 (LLaVA's choice)")
    if image.type == "clip":
        return VisionChoice(image.layer, "default" if image.drop_cls else "full", 1)
    return VisionChoice(image.layer, "full", 0)


def check_mlp_image(image, refuse, runtime: str) -> None:
    """What every LLaVA-style target (transformers' LLaVA, llama.cpp's mlp mmproj) reads: a CLIP or
    SigLIP tower, linear -> GELU -> linear, one token per patch. `refuse` makes the target's error."""
    if image.type not in ("clip", "siglip"):
        raise refuse("model.image.type", f"{image.type!r}: {runtime}'s vision tower is CLIP or SigLIP",
                     "model.image.type: clip or siglip")
    proj = image.projector
    if proj.type not in LLAVA_PROJECTORS:
        raise refuse("model.image.projector.type", f"{proj.type!r}: {runtime}'s projector is linear -> GELU -> "
                     "linear", "projector type mlp2x_gelu (train with configs/phi2-tinyclip-stage1-llava.yaml)")
    if proj.tokens_per_feature != 1:
        raise refuse("model.image.projector.tokens_per_feature", f"{proj.tokens_per_feature}: {runtime} makes one "
                     "token per feature", "tokens_per_feature: 1")
    if proj.pixel_shuffle != 1:
        raise refuse("model.image.projector.pixel_shuffle", f"{proj.pixel_shuffle}: {runtime}'s projector reads "
                     "every patch token on its own", "pixel_shuffle: 1")


def image_projector(model) -> nn.Sequential:
    """The image projector's linear -> GELU -> linear (without a tiled model's layout)."""
    projector = model.projectors["image"]
    return getattr(projector, "inner", projector)


def check_projector_width(model) -> None:
    first = image_projector(model)[0]
    d_llm = model.llm.get_input_embeddings().embedding_dim
    if first.out_features != d_llm:
        raise refuse("model.image.projector.hidden_size", f"{first.out_features}: LLaVA's projector is as wide "
                     f"as the LLM ({d_llm})", "leave hidden_size unset")


def check_llm_layout(llm) -> None:
    if llm.base_model_prefix != "model":
        raise refuse("model.llm", f"{type(llm).__name__} keeps its layers under {llm.base_model_prefix!r}, "
                     "LLaVA loaders expect 'model'", "a Llama, Qwen2, Phi, Mistral or Gemma LLM")


def check_lm_head_bias(llm, keep: bool) -> None:
    """An LM-head bias (Phi has one) is written with the weights, since vLLM's Phi needs the key,
    but LlavaForConditionalGeneration has no place for it: only zeros, unless the user accepts that."""
    bias = llm.get_output_embeddings().bias
    if bias is not None and bias.abs().max() > 0 and not keep:
        raise refuse("model.llm", f"{type(llm).__name__}'s LM head has a non-zero bias, which transformers' "
                     "LlavaForConditionalGeneration has no place for (vLLM applies it)",
                     "--keep-lm-head-bias to write it anyway for vLLM, or an LLM without one (Llama, Qwen2)")


def add_media_tokens(tokenizer, llm, end_token_id: int | None) -> tuple[int, str, list[int]]:
    """Give the tokenizer an `<image>` token (and a stand-in for an ordinary-word end token), with
    embedding rows the LLM's own tokens never use. -> (image token id, text written after each
    `<image>`, ids that are new to the model and must never be generated)."""
    before = len(tokenizer)
    end_text = ""
    if end_token_id is not None:
        added = tokenizer.added_tokens_decoder.get(end_token_id)
        end_text = added.content if added is not None else IMAGE_END_TOKEN
    wanted = [IMAGE_TOKEN] + ([IMAGE_END_TOKEN] if end_text == IMAGE_END_TOKEN else [])
    tokenizer.add_special_tokens({"additional_special_tokens": wanted}, replace_extra_special_tokens=False)
    new_ids = list(range(before, len(tokenizer)))
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    inputs, outputs = llm.get_input_embeddings().weight, llm.get_output_embeddings()
    tied = outputs.weight is inputs
    with torch.no_grad():
        for token_id in new_ids:
            if not tied:
                outputs.weight[token_id].zero_()
                if outputs.bias is not None:
                    outputs.bias[token_id] = 0
            is_end = tokenizer.convert_ids_to_tokens(token_id) == IMAGE_END_TOKEN
            inputs[token_id] = inputs[end_token_id] if is_end else 0  # <image> rows are replaced by features
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), end_text, new_ids


def _literal(text: str) -> str:
    """A Jinja string literal holding `text`."""
    return json.dumps(text, ensure_ascii=False)


def default_system(processor) -> str:
    """Jinja that starts `ns.messages` with the recipe's system prompt when the client sends none."""
    if not processor.system:
        return ""
    return (f"{{%- if messages and messages[0]['role'] != 'system' -%}}"
            f"{{%- set ns.messages = [{{'role': 'system', 'content': {_literal(processor.system)}}}] -%}}"
            "{%- endif -%}\n")


def chat_template(processor, end_text: str) -> str:
    """A Jinja chat template that renders conversations as omnilm's template does, with each
    image written as `<image>` plus the end-of-image token. Contents may be strings with `<image>`
    markers or lists of {"type": "image"} / {"type": "text"} items (joined by newlines, images
    first when the recipe lays media first, as omnilm's server does)."""
    image = _literal(IMAGE_TOKEN + end_text)
    media_first = "true" if processor.media_first else "false"
    preamble = (
        "{%- set ns = namespace(messages=[]) -%}\n"
        + default_system(processor)
        + "{%- for message in messages -%}\n"
        "  {%- if message['content'] is string -%}{%- set text = message['content'] -%}\n"
        "  {%- else -%}\n"
        "    {%- set parts = namespace(images=[], items=[]) -%}\n"
        "    {%- for item in message['content'] -%}\n"
        f"      {{%- if item['type'] == 'image' and {media_first} -%}}\n"
        "        {%- set parts.images = parts.images + ['<image>'] -%}\n"
        "      {%- elif item['type'] == 'image' -%}{%- set parts.items = parts.items + ['<image>'] -%}\n"
        "      {%- else -%}{%- set parts.items = parts.items + [item['text']] -%}{%- endif -%}\n"
        "    {%- endfor -%}\n"
        "    {%- set text = (parts.images + parts.items) | join('\\n') -%}\n"
        "  {%- endif -%}\n"
        f"  {{%- set text = text | replace('<image>', {image}) -%}}\n"
        "  {%- set ns.messages = ns.messages + [{'role': message['role'], 'content': text}] -%}\n"
        "{%- endfor -%}\n"
        "{%- set messages = ns.messages -%}\n"
    )
    return preamble + template_body(processor)


def template_body(processor) -> str:
    """The Jinja that renders `messages` (contents already plain strings) as omnilm's template does."""
    from omnilm.data.chat import ChatTemplate, get_template

    template = get_template(processor.template)
    if isinstance(template, ChatTemplate):
        return processor.tokenizer.chat_template
    return (
        "{%- for message in messages -%}\n"
        f"  {{%- if message['role'] == 'system' -%}}{{{{ message['content'] + {_literal(template.system_suffix)} }}}}\n"
        f"  {{%- elif message['role'] == 'user' -%}}{{{{ {_literal(template.user_prefix)} + message['content'] + "
        f"{_literal(template.user_suffix)} }}}}\n"
        f"  {{%- elif message['role'] == 'assistant' -%}}{{{{ {_literal(template.assistant_prefix)} + "
        "message['content'] + eos_token }}\n"
        f"    {{%- if not loop.last -%}}{{{{ {_literal(template.turn_sep)} }}}}{{%- endif -%}}\n"
        "  {%- endif -%}\n"
        "{%- endfor -%}\n"
    )


def image_processor(processor):
    """The processor's image preprocessing as a transformers image processor (the PIL backend: no torchvision)."""
    from transformers import CLIPImageProcessorPil

    from omnilm.model.image_processing import CenterCropImageProcessor

    part = processor.image_processor
    if not isinstance(part, CenterCropImageProcessor):
        return copy.deepcopy(part)
    size = part.size  # omnilm's shortest edge, centre crop, bicubic, normalize
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 resample=3, image_mean=part.image_mean, image_std=part.image_std)


def llava_config(llm, tower, choice: VisionChoice, image_token_id: int, tokens: int, dtype: torch.dtype,
                 config_class=None, **extra):
    """A LlavaConfig, or `config_class` (LlavaNextConfig) with its `extra` fields."""
    from transformers import LlavaConfig

    config_class = config_class or LlavaConfig
    vision = copy.deepcopy(tower.config)
    if vision.model_type.startswith("siglip"):
        vision.vision_use_head = False  # LLaVA reads hidden states; the pooling head is never used
    text = copy.deepcopy(llm.config)
    text.architectures = [type(llm).__name__]  # vLLM builds the LLM from this
    config = config_class(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=image_token_id,
                          image_seq_length=tokens, projector_hidden_act="gelu",
                          vision_feature_select_strategy=choice.select_strategy,
                          vision_feature_layer=choice.feature_layer, multimodal_projector_bias=True,
                          tie_word_embeddings=bool(llm.config.tie_word_embeddings), **extra)
    config.architectures = [config_class.__name__.removesuffix("Config") + "ForConditionalGeneration"]
    config.dtype = dtype
    return config


def llava_state_dict(llm, tower, projector: nn.Sequential, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state = {}
    tied = llm.get_output_embeddings().weight is llm.get_input_embeddings().weight
    for name, tensor in llm.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # one copy: LLaVA ties it back on load
        state[LLM_PREFIX + name] = tensor
    for name, tensor in tower.state_dict().items():
        if not name.startswith("head."):  # SigLIP's pooling head: unused, and absent from LLaVA's tower
            state[TOWER_PREFIX + name] = tensor
    for llava_name, index in PROJECTOR_LAYERS.items():
        for kind in ("weight", "bias"):
            state[f"multi_modal_projector.{llava_name}.{kind}"] = getattr(projector[index], kind)
    return {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in state.items()}


def export_llava(model, processor, out, dtype: torch.dtype | None = None, card=None,
                 keep_lm_head_bias: bool = False) -> Path:
    """Write `model` (LoRA merged, 4-bit dequantized) as a transformers LLaVA folder, or raise
    NotExpressible before anything is written. `card(folder)` writes the model card."""
    from transformers import LlavaProcessor

    tiling = model.recipe.model.image.tiling if model.recipe.model.image is not None else "none"
    if tiling != "none":
        raise refuse("model.image.tiling", f"{tiling!r}: LLaVA reads one view; anyres is LLaVA-NeXT's layout "
                     "(omnilm.model.llava_next_format) and split maps onto a GGUF idefics3 mmproj, which omnilm "
                     "does not export yet", "tiling: anyres (LlavaNextForConditionalGeneration) or none")
    parts = llava_parts(model, processor, dtype, keep_lm_head_bias)
    config = llava_config(parts.llm, parts.tower, parts.choice, parts.image_id, processor.image_tokens, parts.dtype)
    llava_processor = LlavaProcessor(image_processor=image_processor(processor), **parts.processor_kwargs)
    return write_folder(out, parts.state, config, parts.generation, llava_processor, card)


@dataclass
class LlavaParts:
    """What every LLaVA-family export writes: the plain LLM with its added tokens, the tower,
    the weights under llava-hf's names, generation settings and the processor's common arguments."""

    llm: nn.Module
    tower: nn.Module
    choice: VisionChoice
    image_id: int
    dtype: torch.dtype
    state: dict
    generation: object
    processor_kwargs: dict


def llava_parts(model, processor, dtype: torch.dtype | None, keep_lm_head_bias: bool) -> LlavaParts:
    """The checks and pieces shared by the LLaVA and LLaVA-NeXT exports (NotExpressible before any work)."""
    from transformers import GenerationConfig

    encoder = model.encoders["image"] if "image" in model.encoders else None
    choice = vision_choice(model.recipe, encoder)
    check_projector_width(model)
    llm_dtype = dtype or next(p for p in model.llm.parameters() if p.is_floating_point()).dtype
    llm = plain_llm(model.llm, torch.float32)
    check_llm_layout(llm)
    check_lm_head_bias(llm, keep_lm_head_bias)
    tokenizer = copy.deepcopy(processor.tokenizer)
    image_id, end_text, new_ids = add_media_tokens(tokenizer, llm, model.recipe.model.image.end_token_id)
    tower = encoder.tower
    state = llava_state_dict(llm, tower, image_projector(model), llm_dtype)
    generation = copy.deepcopy(llm.generation_config) if llm.generation_config is not None else GenerationConfig()
    if new_ids:
        generation.suppress_tokens = new_ids  # rows with no trained output: never generate them
    kwargs = {"tokenizer": tokenizer, "patch_size": tower.config.patch_size,
              "vision_feature_select_strategy": choice.select_strategy,
              "chat_template": chat_template(processor, end_text), "image_token": IMAGE_TOKEN,
              "num_additional_image_tokens": choice.additional_tokens}
    return LlavaParts(llm, tower, choice, image_id, llm_dtype, state, generation, kwargs)


def write_folder(out, state: dict, config, generation, hf_processor, card=None) -> Path:
    """Weights, config, generation settings, processor and card, written whole or not at all."""
    from huggingface_hub import save_torch_state_dict

    from omnilm.files import atomic_folder
    from omnilm.model.checkpoint import nbytes

    out = Path(out)
    with atomic_folder(out, nbytes(state)) as tmp:
        save_torch_state_dict(state, tmp, metadata={"format": "pt"})
        config.save_pretrained(tmp)
        generation.save_pretrained(tmp)
        hf_processor.save_pretrained(tmp)
        if card is not None:
            card(tmp)
        shutil.rmtree(out, ignore_errors=True)  # the new folder replaces it whole
    return out
