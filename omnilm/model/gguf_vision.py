"""The image half of a llama.cpp mmproj: a CLIP or SigLIP tower and LLaVA's `mlp` projector.

llama.cpp's `mlp` graph (tools/mtmd/models/llava.cpp) runs the tower up to one hidden layer (the
`clip.vision.feature_layer` index, 0 = the embeddings), applies the post-layernorm only if the file
has one, then linear -> GELU (tanh form) -> linear. That is omnilm's `mlp2x_gelu` over `layer`;
omnilm's exact GELU differs from the tanh form by < 1e-3 per value.

CLIP's class token is where the two part. llama.cpp appends it after the patches, gives the
sequence positions 0..N in that order, then reads rows 1..N: the patches after the first, and the
class token last. Writing the position table rolled by one (the class token's row last) makes the
tower itself compute exactly what transformers' does (attention does not care about order), but
the projector still sees [patch 1 .. patch N-1, class token] where omnilm trained on
[patch 0 .. patch N-1]. So a CLIP tower is refused unless the user accepts that one image token
in N differs (`--approximate-clip`); SigLIP (no class token) exports exactly.
"""
from __future__ import annotations

import torch

from omnilm.model.gguf_parts import add_tensor, refuse
from omnilm.model.llava_format import check_mlp_image
from omnilm.model.llava_source import TOWER_PREFIX

PROJECTOR_TYPE = "mlp"
GELU_ACTS = ("gelu", "gelu_pytorch_tanh", "gelu_new")  # llama.cpp's use_gelu (its GELU is the tanh form)


def check_vision(model, approximate_clip: bool = False) -> None:
    """Raise (before anything is written) what llama.cpp's `mlp` projector cannot express."""
    image = model.recipe.model.image
    check_mlp_image(image, refuse, "llama.cpp")
    if image.tiling != "none":
        raise refuse("model.image.tiling", f"{image.tiling!r}: llama.cpp's mlp projector reads one view",
                     "tiling: none")
    tower = model.encoders["image"].tower
    if image.type == "clip" and not image.drop_cls:
        raise refuse("model.image.drop_cls", "false: llama.cpp's mlp projector reads one token per patch",
                     "drop_cls: true")
    if image.type == "clip" and not approximate_clip:
        raise refuse("model.image.type", "clip: llama.cpp's mlp graph reads CLIP's class token in place of the "
                     "first patch (tools/mtmd/models/llava.cpp), so 1 of the image tokens differs from omnilm's",
                     "a SigLIP tower (model.image.type: siglip), or --approximate-clip to export it anyway")
    if tower.config.hidden_act not in GELU_ACTS + ("quick_gelu",):
        raise refuse("model.image (tower)", f"hidden_act {tower.config.hidden_act!r}: llama.cpp's CLIP runs GELU or "
                     "quick GELU", "a CLIP or SigLIP tower as published")


def feature_layer(layer: int, n_layers: int) -> int:
    """omnilm's `layer` (a hidden_states index, -1 = the last) as llama.cpp's non-negative index."""
    return layer if layer >= 0 else n_layers + 1 + layer


def write_vision(writer, model, processor, llm_width: int, weight_type: str) -> None:
    """Add the tower's hyperparameters and tensors (`v.*`) and the projector's (`mm.0`, `mm.2`)."""
    import gguf

    image, config = model.recipe.model.image, model.encoders["image"].tower.config
    tower = model.encoders["image"].tower
    writer.add_vision_image_size(config.image_size)
    writer.add_vision_patch_size(config.patch_size)
    writer.add_vision_embedding_length(config.hidden_size)
    writer.add_vision_feed_forward_length(config.intermediate_size)
    writer.add_vision_block_count(config.num_hidden_layers)
    writer.add_vision_head_count(config.num_attention_heads)
    writer.add_vision_attention_layernorm_eps(config.layer_norm_eps)
    writer.add_vision_projection_dim(llm_width)
    writer.add_vision_use_gelu(config.hidden_act in GELU_ACTS)
    writer.add_array("clip.vision.feature_layer", [feature_layer(image.layer, config.num_hidden_layers)])
    writer.add_vision_image_mean(list(processor.image_processor.image_mean))
    writer.add_vision_image_std(list(processor.image_processor.image_std))

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, config.num_hidden_layers)
    # SigLIP's layer -1 is its output after the post-layernorm; everywhere else the norm is left out
    keep_post_ln = image.type == "siglip" and image.layer == -1
    for name, tensor in tower.state_dict().items():
        name = name.removeprefix("vision_model.")
        if name.startswith("head.") or (name.startswith("post_layernorm.") and not keep_post_ln):
            continue  # SigLIP's pooling head and the unused post-layernorm
        hf_name = TOWER_PREFIX + name
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise refuse("model.image (tower)", f"tensor {name} has no llama.cpp name", "a CLIP or SigLIP tower")
        if gguf_name == "v.position_embd.weight" and image.type == "clip":
            tensor = tensor.roll(-1, dims=0)  # [1 + P, D]: the class token's row last, where llama.cpp puts it
        add_tensor(writer, gguf_name, tensor, tensor_type(gguf_name, tensor, weight_type))
    projector = model.projectors["image"]
    for index in (0, 2):  # linear_1 and linear_2 of mlp2x_gelu, llama.cpp's mm.0 and mm.2
        add_tensor(writer, f"mm.{index}.weight", projector[index].weight, weight_type)
        add_tensor(writer, f"mm.{index}.bias", projector[index].bias, "f32")


def tensor_type(name: str, tensor: torch.Tensor, weight_type: str) -> str:
    """Matrices (and the patch kernel) in `weight_type`; norms, biases and embedding tables in f32."""
    if tensor.dim() >= 2 and not name.endswith(("position_embd.weight", "class_embd")):
        return weight_type
    return "f32"
