"""configs/accelerate/*.yaml load as accelerate reads them (unknown keys are refused), and the
DeepSpeed ones build their ZeRO plugin: DeepSpeed itself cannot run on these CPU machines, so
bench/gpu.sh runs them on a GPU. fsdp2.yaml trains in tests/test_fsdp.py."""
import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DeepSpeedPlugin, DistributedType

from tests.conftest import CONFIGS

PLUGIN_FIELDS = ("zero_stage", "gradient_clipping", "offload_optimizer_device", "offload_param_device",
                 "zero3_save_16bit_model", "zero3_init_flag")


def test_fsdp2_config_names_fsdp_version_2_with_layer_wrapping_and_sharded_checkpoints():
    config = ClusterConfig.from_yaml_file(str(CONFIGS / "accelerate" / "fsdp2.yaml"))
    assert config.distributed_type == DistributedType.FSDP
    assert config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"


@pytest.mark.parametrize("name,stage", [("zero2", 2), ("zero3", 3)])
def test_zero_configs_build_their_deepspeed_plugin(name, stage):
    config = ClusterConfig.from_yaml_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert "gradient_accumulation_steps" not in config.deepspeed_config  # the recipe's train.grad_accum decides
    plugin = DeepSpeedPlugin(**{k: v for k, v in config.deepspeed_config.items() if k in PLUGIN_FIELDS})
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == stage
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)  # weights.safetensors
