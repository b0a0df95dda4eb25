"""The accelerate configs as accelerate reads them, and what a launch with them makes qlora.py load.

Under FSDP or DeepSpeed ZeRO-3 the model must be loaded without a device_map, with its 4-bit
weights packed in bf16 (FSDP and ZeRO-3 shard flat tensors of one dtype) and its norms in bf16
even with --norms_in_fp32. qlora.py learns about the launch only from the environment that
`accelerate launch` gives it; here that environment is built by accelerate's own launch code.
"""

import os

import bitsandbytes as bnb
import pytest
import torch
from accelerate.commands import launch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from conftest import REPO_ROOT
from test_qlora_cli import quick_flags

CONFIG_DIR = os.path.join(REPO_ROOT, "examples", "accelerate")
CONFIGS = ("fsdp_qlora.yaml", "deepspeed_zero3.yaml")


def load_accelerate_config(name):
    return load_config_from_file(os.path.join(CONFIG_DIR, name))


def test_fsdp_config_reads_as_fsdp_qlora_needs():
    config = load_accelerate_config("fsdp_qlora.yaml")
    assert config.distributed_type == DistributedType.FSDP
    assert config.mixed_precision == "bf16" and config.num_processes == 2 and not config.use_cpu
    fsdp = config.fsdp_config
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    # Low-memory loading: rank 0 reads the weights and the other ranks receive them.
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True and fsdp["fsdp_sync_module_states"] is True
    # Flat parameters mix frozen 4-bit weights and trainable LoRA weights only without orig params.
    assert fsdp["fsdp_use_orig_params"] is False


def test_deepspeed_config_reads_as_zero3():
    config = load_accelerate_config("deepspeed_zero3.yaml")
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert config.mixed_precision == "bf16" and config.num_processes == 2 and not config.use_cpu
    deepspeed = config.deepspeed_config
    assert deepspeed["zero_stage"] == 3 and deepspeed["zero3_init_flag"] is True
    assert deepspeed["offload_optimizer_device"] == deepspeed["offload_param_device"] == "none"


def launcher_environment(config_name, monkeypatch):
    """The ACCELERATE_*/FSDP_* variables `accelerate launch --config_file NAME qlora.py` would set
    for its processes, taken from accelerate's launch code with the process start left out."""
    captured = {}
    monkeypatch.setattr(launch, "multi_gpu_launcher", lambda args: captured.update(prepare_multi_gpu_env(args)))
    monkeypatch.setattr(launch, "deepspeed_launcher",
                        lambda args: captured.update(prepare_deepspeed_cmd_env(args)[1]))
    args = launch.launch_command_parser().parse_args(
        ["--config_file", os.path.join(CONFIG_DIR, config_name), "--main_process_port", "0", "qlora.py"])
    launch.launch_command(args)
    return {key: value for key, value in captured.items() if key.startswith(("ACCELERATE_", "FSDP_"))}


@pytest.mark.parametrize("config_name, variable", [(CONFIGS[0], "ACCELERATE_USE_FSDP"),
                                                   (CONFIGS[1], "ACCELERATE_USE_DEEPSPEED")])
def test_the_launcher_announces_the_sharded_backend(config_name, variable, monkeypatch):
    environment = launcher_environment(config_name, monkeypatch)
    assert environment[variable] == "true" and environment["ACCELERATE_MIXED_PRECISION"] == "bf16"


def load_as_launched(tiny_model_dir, tmp_path, monkeypatch, launcher_env):
    """qlora.py's model loading for --bf16 --norms_in_fp32 under launcher_env: the model and the
    keyword arguments from_pretrained received.

    The arguments are parsed before the environment is set: with ACCELERATE_USE_DEEPSPEED the
    Trainer's arguments need the deepspeed package, which sharded training installs anyway.
    """
    from transformers import AutoModelForCausalLM

    from qlorakit.config import parse_arguments
    from qlorakit.tokenizer import load_tokenizer
    from qlorakit.training_model import load_model

    arguments = parse_arguments(
        quick_flags(tiny_model_dir, str(tmp_path), "--norms_in_fp32")[1:])
    for key, value in launcher_env.items():
        monkeypatch.setenv(key, value)
    received = {}
    original = AutoModelForCausalLM.from_pretrained

    def record_arguments(*args, **kwargs):
        received.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record_arguments)
    tokenizer = load_tokenizer(tiny_model_dir)
    return load_model(arguments, tokenizer), received, tokenizer


def storage_dtypes(model):
    """dtypes of the packed 4-bit weights, of the norm weights and of the LoRA weights."""
    packed = {p.dtype for p in model.parameters() if isinstance(p, bnb.nn.Params4bit)}
    norms = {p.dtype for name, p in model.named_parameters() if "norm" in name}
    lora = {p.dtype for name, p in model.named_parameters() if "lora_" in name}
    return packed, norms, lora


def finite_loss(model, tokenizer):
    """One forward pass under bf16 autocast, as the Trainer runs it with --bf16."""
    batch = tokenizer(["Name three primary colours."], return_tensors="pt")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return torch.isfinite(model(**batch, labels=batch["input_ids"]).loss).item()


@pytest.mark.parametrize("config_name", CONFIGS)
def test_a_sharded_launch_loads_without_device_map_with_bf16_storage_and_norms(
        config_name, tiny_model_dir, tmp_path, monkeypatch):
    environment = launcher_environment(config_name, monkeypatch)
    model, received, tokenizer = load_as_launched(tiny_model_dir, tmp_path, monkeypatch, environment)
    assert received["device_map"] is None and received["max_memory"] is None
    assert received["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    assert storage_dtypes(model) == ({torch.bfloat16}, {torch.bfloat16}, {torch.bfloat16})
    assert finite_loss(model, tokenizer)


def test_a_plain_launch_keeps_uint8_storage_the_device_map_and_fp32_norms(tiny_model_dir, tmp_path, monkeypatch):
    for variable in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(variable, raising=False)
    model, received, tokenizer = load_as_launched(tiny_model_dir, tmp_path, monkeypatch, {})
    assert received["device_map"] == {"": "cpu"}
    assert received["quantization_config"].bnb_4bit_quant_storage == torch.uint8
    assert storage_dtypes(model) == ({torch.uint8}, {torch.float32}, {torch.bfloat16})
    assert finite_loss(model, tokenizer)
