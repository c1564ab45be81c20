"""OmniLM: any causal LM + frozen media encoders + trainable projectors, composed not inherited.

A transformers PreTrainedModel: `OmniLM.from_pretrained(folder, dtype=..., device_map=...,
quantization_config=...)` rebuilds it from `config.json` (OmniConfig) and its safetensors, and
`save_pretrained` writes them. The LLM, encoders and projectors are held as attributes
(`llm`, `encoders`, `projectors`), never subclassed.
"""
from __future__ import annotations

import contextlib
import copy
import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel

from omnilm.core.components import ENCODERS
from omnilm.core.sample import IGNORE, PLACEHOLDER_IDS
from omnilm.errors import PlaceholderMismatch
from omnilm.model.configuration import OmniConfig
from omnilm.model.encoders import build_encoder
from omnilm.model.projector import build_projector, project
from omnilm.model.tiling import TiledProjector, TileFeatures, TileLayout, Tiles, Tiling, tiling_of


UNQUANTIZED = ("encoders", "projectors", "llm.lm_head")  # what QLoRA keeps out of 4-bit


class OmniLM(PreTrainedModel):
    """Any Hugging Face causal LM with frozen media encoders and trainable projectors beside it.

    `embed` writes each encoder's projected features into the placeholder positions of the
    token embeddings (the counts must match); `forward` runs the LLM on them (loss with labels).

    Built from `config` alone (random weights, as `from_pretrained` does before loading) or, by
    `omnilm.build_model`, around an already loaded `llm` and `encoders`; projectors not given are
    built here, each after `torch.manual_seed(seed)` when a seed is given."""

    config_class = OmniConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config: OmniConfig, llm: nn.Module | None = None, encoders: dict | None = None,
                 projectors: dict | None = None, seed: int | None = None):
        super().__init__(config)
        for part in (llm, *(encoders or {}).values(), *(projectors or {}).values()):
            _mark_initialized(part)
        self.llm = llm if llm is not None else AutoModelForCausalLM.from_config(config.text_config)
        self.encoders = nn.ModuleDict(encoders if encoders is not None else {
            m: build_encoder(_skeleton_recipe(config, m)) for m in config.modalities})
        self.projectors = nn.ModuleDict(projectors if projectors is not None else self._new_projectors(seed))
        self.recipe = None  # the training recipe it came from, if known (provenance: exports copy it)
        self.inherited: set[str] = set()  # parameter names loaded from model.init_from (saved with each run)
        # device_map and FSDP keep each decoder / encoder layer whole: the layer classes that the
        # transformers models inside list (the LLM's, a vision tower's, Whisper's encoder's), those
        # this model holds (FSDP refuses a class it cannot find; CLIPVisionModel lists text ones too).
        present = {type(module).__name__ for module in self.modules()}
        self._no_split_modules = sorted({name for module in self.modules() if module is not self
                                         for name in getattr(module, "_no_split_modules", None) or ()} & present)
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        # Whether the LLM takes `logits_to_keep` as positions (most transformers causal LMs do);
        # decided once here rather than by inspecting a signature on every training step.
        self.keeps_logits = "logits_to_keep" in inspect.signature(type(base).forward).parameters
        self.post_init()

    def _new_projectors(self, seed: int | None) -> dict[str, nn.Module]:
        d_llm = self.llm.get_input_embeddings().embedding_dim
        projectors = {}
        for modality in self.config.modalities:
            settings = self.config.encoder(modality)
            if seed is not None:
                torch.manual_seed(seed)
            projectors[modality] = build_projector(
                settings.projector.type, self.encoders[modality].hidden_size, d_llm, settings.projector.hidden_size,
                settings.projector.tokens_per_feature, ENCODERS[settings.type].stack(settings),
                settings.projector.pixel_shuffle)
            tiling = _tiling(self.config, settings, modality)
            if tiling is not None:
                projectors[modality] = TiledProjector(projectors[modality], TileLayout(tiling, d_llm))
        return projectors

    @classmethod
    def from_pretrained(cls, *args, quantization_config=None, **kwargs):
        """transformers' from_pretrained; a 4-bit or 8-bit `quantization_config` applies to the
        LLM's layers only, as QLoRA does (its LM head, the encoders and the projectors stay in
        `dtype`) unless it names its own `llm_int8_skip_modules`."""
        if quantization_config is not None and getattr(quantization_config, "llm_int8_skip_modules", ()) is None:
            quantization_config = copy.deepcopy(quantization_config)
            quantization_config.llm_int8_skip_modules = list(UNQUANTIZED)
        return super().from_pretrained(*args, quantization_config=quantization_config, **kwargs)

    def save_pretrained(self, save_directory, *args, dtype: torch.dtype | None = None, **kwargs):
        """transformers' save_pretrained of the plain model: LoRA merged and 4-bit weights
        dequantized first (omnilm.model.merge), so the folder loads without peft or bitsandbytes;
        `dtype` casts the LLM (default: its compute dtype)."""
        plain = self.with_plain_llm(dtype)
        return super(OmniLM, plain).save_pretrained(save_directory, *args, **kwargs)

    def with_plain_llm(self, dtype: torch.dtype | None = None) -> "OmniLM":
        """This model with its LLM as a plain transformers model (the same encoders and projectors);
        itself when the LLM is plain already and needs no cast."""
        quantized = getattr(self.llm, "is_loaded_in_4bit", False) or getattr(self.llm, "is_loaded_in_8bit", False)
        current = next(p for p in self.llm.parameters() if p.is_floating_point()).dtype
        if not hasattr(self.llm, "get_base_model") and not quantized and dtype in (None, current):
            return self
        from omnilm.model.merge import plain_llm

        plain = OmniLM(self.config, llm=plain_llm(self.llm, dtype or current), encoders=dict(self.encoders),
                       projectors=dict(self.projectors))
        plain.recipe, plain.inherited = self.recipe, self.inherited
        return plain

    def _init_weights(self, module) -> None:
        """Nothing to initialize: projectors start as their constructors made them (seeded), and
        the encoders and the LLM come loaded or initialized by their own classes."""

    def tie_weights(self, *args, **kwargs) -> None:
        """A PEFT-wrapped LLM tied its weights when it was loaded (its tied names are its own, not
        under `llm.`); a plain one is tied by transformers as any submodel."""
        if not hasattr(self.llm, "get_base_model"):
            super().tie_weights(*args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        return self.llm.get_output_embeddings()

    def train(self, mode: bool = True):
        """Frozen encoders stay in eval mode: no dropout, and BatchNorm keeps its statistics."""
        super().train(mode)
        for encoder in self.encoders.values():
            if not any(p.requires_grad for p in encoder.parameters()):
                encoder.eval()
        return self

    def media_features(self, modality: str, media: list[torch.Tensor] | None, features: list[torch.Tensor] | None):
        """Raw inputs through the encoder (or precomputed encoder features) then the projector."""
        tiled = isinstance(self.projectors[modality], TiledProjector)
        kind, items = (TileFeatures, features) if features is not None else (Tiles, media)
        if tiled and not all(isinstance(item, kind) for item in items):
            raise PlaceholderMismatch(f"{modality}: this model tiles its images; give them as the processor's "
                                      f"{kind.__name__} (omnilm.core.tiles)")
        if features is None:
            encoder = self.encoders[modality]
            frozen = not any(p.requires_grad for p in encoder.parameters())
            inputs = [view for item in media for view in item.pixels] if tiled else media  # every tile on its own
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                features = encoder(inputs)  # list of [T_i, d_enc]
            if tiled:
                views = iter(features)
                features = [TileFeatures(torch.stack([next(views) for _ in item.pixels]), item.grid) for item in media]
        projector = self.projectors[modality]
        weight = next(projector.parameters())
        if tiled:  # each image's views [n, P, d_enc]
            views = [f.features.to(device=weight.device, dtype=weight.dtype) for f in features]
            return projector(views, [f.grid for f in features])  # [N, d_llm]
        features = [f.to(device=weight.device, dtype=weight.dtype) for f in features]
        return project(projector, features)  # [N, d_llm]

    def embed(self, input_ids: torch.Tensor, media: dict | None = None, features: dict | None = None) -> torch.Tensor:
        """Token embeddings with every placeholder position replaced by a projected media feature."""
        media, features = media or {}, features or {}
        table = self.llm.get_input_embeddings()
        is_placeholder = input_ids < 0
        embeds = table(input_ids.masked_fill(is_placeholder, 0))  # [B, T, D]
        for modality, placeholder in PLACEHOLDER_IDS.items():
            positions = input_ids == placeholder  # [B, T]
            count = int(positions.sum())
            items_in, items_feat = media.get(modality), features.get(modality)
            if count == 0 and not items_in and not items_feat:
                continue
            if modality not in self.projectors:
                raise PlaceholderMismatch(f"the prompt has {modality} input but this model has no {modality} encoder")
            projected = self.media_features(modality, items_in, items_feat)  # [N, D]
            if projected.shape[0] != count:
                raise PlaceholderMismatch(
                    f"{modality}: {count} placeholder positions in the token ids but "
                    f"{projected.shape[0]} feature vectors from the encoder"
                )
            embeds = embeds.masked_scatter(positions.unsqueeze(-1), projected.to(embeds.dtype))
        return embeds

    def forward(self, input_ids, attention_mask=None, labels=None, media=None, features=None,
                num_items_in_batch=None, **llm_kwargs):
        """With labels, the loss is the mean over learned tokens; with `num_items_in_batch` (the
        learned tokens of the whole optimizer step, every micro-batch and process: transformers'
        name) it is this batch's sum divided by that count, so micro-batches add up to the step's mean."""
        embeds = self.embed(input_ids, media, features)  # [B, T, D]
        if labels is not None and self.keeps_logits:
            return self._loss_where_learned(embeds, attention_mask, labels, num_items_in_batch, **llm_kwargs)
        if num_items_in_batch is not None:
            llm_kwargs["num_items_in_batch"] = num_items_in_batch  # transformers' causal-LM loss divides by it
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **llm_kwargs)

    def _loss_where_learned(self, embeds, attention_mask, labels, num_items_in_batch=None, **llm_kwargs):
        """The LLM's own token loss, with the LM head applied only to the hidden states that
        predict a learned token. With short answers after long prompts (and a large vocabulary)
        most logits would be computed only to be ignored: on easy-VQA with SmolLM2 (49k
        vocabulary) the positions any row learns at hold about twice the learned tokens, and the
        logits there cost a fifth of a training step.

        `logits_to_keep` narrows the hidden states to those positions ([B, K, D]) inside the LLM's
        own forward; a hook on its LM head then keeps only the learned rows ([1, N, D]), so
        whatever the model does after the head (logit scaling, soft-capping) still applies.
        With labels, `out.logits` is therefore [1, N, V]: the learned tokens' logits, in order."""
        targets = labels[:, 1:]  # [B, T-1]: position t predicts token t+1
        keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)  # [K] positions any row learns at
        kept = targets[:, keep]  # [B, K]
        learned = kept != IGNORE  # [B, K]
        with _head_rows(self.llm, learned) as selected:
            out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=keep, **llm_kwargs)
        logits = out.logits.flatten(0, -2)  # [N, V], or [B * K, V] where no LM head module was called
        targets = kept[learned] if selected else kept.flatten()  # [N] or [B * K]
        total = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
        out.loss = total / (num_items_in_batch if num_items_in_batch is not None else learned.sum())
        return out

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, media=None, features=None, **generate_kwargs):
        """KV-cached generation through the LLM's own `generate`; returns only the new token ids."""
        embeds = self.embed(input_ids, media, features)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)


@contextlib.contextmanager
def _head_rows(llm: nn.Module, rows: torch.Tensor):
    """While inside, the LLM's LM head sees only the hidden states where `rows` ([B, K] bool) is
    true: its input [B, K, D] becomes [1, N, D]. Yields a list that is non-empty once it has
    (an LLM without an LM head module, or one whose forward bypasses it, keeps [B, K, V] logits)."""
    head, selected = llm.get_output_embeddings(), []
    if head is None:
        yield selected
        return

    def select(module, args):
        selected.append(True)
        return (args[0][rows].unsqueeze(0), *args[1:])  # [B, K, D] -> [1, N, D]

    handle = head.register_forward_pre_hook(select)
    try:
        yield selected
    finally:
        handle.remove()


def _mark_initialized(part: nn.Module | None) -> None:
    """A loaded part (LoRA adapters included, whose B starts at zero) keeps its weights:
    post_init initializes only modules transformers has not marked as initialized."""
    for module in part.modules() if part is not None else ():
        module._is_hf_initialized = True


def _tiling(config: OmniConfig, settings, modality: str) -> Tiling | None:
    """The image encoder's tiling, with the tower's sizes from its saved config."""
    tower = config.encoder_config(modality)
    if settings.tiling == "none" or tower is None:
        return None
    return tiling_of(settings, tower.image_size, tower.patch_size)


def _skeleton_recipe(config: OmniConfig, modality: str):
    """The recipe entry that builds `modality`'s encoder from its saved transformers config, with
    random weights (from_pretrained fills them in): the same builder as a recipe's random_config."""
    settings = copy.deepcopy(config.encoder(modality))
    sub = config.encoder_config(modality)
    settings.random_config = sub.to_dict() if sub is not None else {}
    return settings


AutoModel.register(OmniConfig, OmniLM, exist_ok=True)
