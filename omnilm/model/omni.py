"""OmniLM: any causal LM + frozen media encoders + trainable projectors, composed not inherited."""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from omnilm.core.sample import IGNORE, PLACEHOLDER_IDS
from omnilm.errors import PlaceholderMismatch
from omnilm.model.projector import project


class OmniLM(nn.Module):
    """Any Hugging Face causal LM with frozen media encoders and trainable projectors beside it.

    `embed` writes each encoder's projected features into the placeholder positions of the
    token embeddings (the counts must match); `forward` runs the LLM on them (loss with labels).
    Built with its OmniProcessor by `omnilm.build_model` / `omnilm.load_pretrained`."""

    def __init__(self, llm: nn.Module, encoders: dict[str, nn.Module], projectors: dict[str, nn.Module]):
        super().__init__()
        self.llm = llm
        self.encoders = nn.ModuleDict(encoders)
        self.projectors = nn.ModuleDict(projectors)
        self.recipe = None  # what it was built from (omnilm.model.build sets it; exports save it)
        self.inherited: set[str] = set()  # parameter names loaded from model.init_from (saved with each run)
        base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
        # Whether the LLM takes `logits_to_keep` as positions (most transformers causal LMs do);
        # decided once here rather than by inspecting a signature on every training step.
        self.keeps_logits = "logits_to_keep" in inspect.signature(type(base).forward).parameters

    def train(self, mode: bool = True):
        """Frozen encoders stay in eval mode: no dropout, and BatchNorm keeps its statistics."""
        super().train(mode)
        for encoder in self.encoders.values():
            if not any(p.requires_grad for p in encoder.parameters()):
                encoder.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def media_features(self, modality: str, media: list[torch.Tensor] | None, features: list[torch.Tensor] | None):
        """Raw inputs through the encoder (or precomputed encoder features) then the projector."""
        if features is None:
            encoder = self.encoders[modality]
            frozen = not any(p.requires_grad for p in encoder.parameters())
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                features = encoder(media)  # list of [T_i, d_enc]
        projector = self.projectors[modality]
        weight = next(projector.parameters())
        return project(projector, [f.to(device=weight.device, dtype=weight.dtype) for f in features])  # [N, d_llm]

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
        """The LLM's own token loss, with the LM head applied only at positions that predict a
        learned token. With short answers after long prompts (and a large vocabulary) most logits
        would be computed only to be ignored: on easy-VQA with SmolLM2 (49k vocabulary, 2 learned
        tokens of ~20) this cut a training step by about a fifth."""
        targets = labels[:, 1:]  # [B, T-1]: position t predicts token t+1
        keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)  # [K] positions any row learns at
        out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=keep, **llm_kwargs)
        logits = out.logits  # [B, K, V]
        kept = targets[:, keep]  # [B, K]
        total = F.cross_entropy(logits.flatten(0, 1).float(), kept.flatten(), ignore_index=IGNORE, reduction="sum")
        out.loss = total / (num_items_in_batch if num_items_in_batch is not None else (kept != IGNORE).sum())
        return out

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, media=None, features=None, **generate_kwargs):
        """KV-cached generation through the LLM's own `generate`; returns only the new token ids."""
        embeds = self.embed(input_ids, media, features)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)
