"""A stage is data: which components train. One function applies it and reports what is frozen."""
from __future__ import annotations

from dataclasses import dataclass

from omnilm.errors import ConfigError

COMPONENTS = ("image_encoder", "image_projector", "audio_encoder", "audio_projector", "llm", "lora")


@dataclass(frozen=True)
class Stage:
    trainable: tuple[str, ...]
    description: str


STAGES = {
    "align": Stage(("image_projector",), "seed stage 1: image projector only, encoder and LLM frozen"),
    "audio-align": Stage(("audio_projector",), "audio projector only, LLM and encoders frozen"),
    "instruct": Stage(("image_projector", "audio_projector", "lora"), "projectors + LoRA adapters on the LLM"),
    "projectors": Stage(("image_projector", "audio_projector"), "image and audio projectors together"),
    "finetune": Stage(("image_projector", "audio_projector", "llm"), "projectors + every weight of the LLM"),
}


def component_of(name: str) -> str:
    """Parameter name -> component (names as in OmniLM.named_parameters())."""
    if name.startswith("projectors."):
        return name.split(".")[1] + "_projector"
    if name.startswith("encoders."):
        return name.split(".")[1] + "_encoder"
    return "lora" if "lora_" in name else "llm"


def apply_stage(model, stage_name: str) -> str:
    """Freeze everything, unfreeze the stage's components; return a per-component report."""
    if stage_name not in STAGES:
        raise ConfigError(f"unknown train.stage {stage_name!r}; choose one of {', '.join(STAGES)}")
    stage = STAGES[stage_name]
    present = {component_of(n) for n, _ in model.named_parameters()}
    wanted = [c for c in stage.trainable if c in present]
    if not wanted:
        raise ConfigError(
            f"stage {stage_name!r} trains {', '.join(stage.trainable)} but the model has none of them "
            f"(has: {', '.join(sorted(present))}); add the encoder or model.llm.lora to the recipe"
        )
    if "lora" in stage.trainable and "lora" not in present:
        raise ConfigError(f"stage {stage_name!r} trains LoRA adapters: set model.llm.lora in the recipe")
    for name, param in model.named_parameters():
        param.requires_grad_(component_of(name) in wanted)
    return parameter_report(model)


def parameter_report(model) -> str:
    totals: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        count = _numel(param)
        entry = totals.setdefault(component_of(name), [0, 0])
        entry[0] += count if param.requires_grad else 0
        entry[1] += count
    lines = [f"{'component':<16}{'trainable':>15}{'total':>15}"]
    for comp in COMPONENTS:
        if comp in totals:
            lines.append(f"{comp:<16}{totals[comp][0]:>15,}{totals[comp][1]:>15,}")
    trainable = sum(t for t, _ in totals.values())
    total = sum(n for _, n in totals.values())
    lines.append(f"{'all':<16}{trainable:>15,}{total:>15,}  ({100 * trainable / max(total, 1):.4f}% trainable)")
    return "\n".join(lines)


def _numel(param) -> int:
    """4-bit weights pack two values a byte; count the logical parameters."""
    quant_state = getattr(param, "quant_state", None)
    return int(quant_state.shape.numel()) if quant_state is not None else param.numel()
