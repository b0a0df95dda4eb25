"""Data parallel on CPU: two torchrun processes with the gloo backend."""

import json
import math
import os
import socket

from conftest import run_python
from test_qlora_cli import quick_flags


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def test_two_process_data_parallel_run(tiny_model_dir, tmp_path):
    flags = quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "4", "--save_steps", "4",
                        "--lora_dropout", "0.1", "--do_eval", "--eval_dataset_size", "8")
    result = run_python(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(), *flags])
    log = result.stdout + result.stderr
    assert log.count("world size: 2") == 1  # printed once, by rank 0
    assert "trained weights identical on all 2 ranks" in log
    checkpoints = sorted(p for p in os.listdir(tmp_path) if p.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-4"]
    state = json.load(open(tmp_path / "checkpoint-4" / "trainer_state.json"))
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 4 and all(loss == loss and loss < 20 for loss in losses)
    # effective batch = per-device batch 4 x accumulation 1 x world size 2: an epoch of the
    # 255 training rows takes ceil(255 / 8) = 32 steps, so 4 steps are 1/8 of it.
    assert state["log_history"][-1]["epoch"] == 4 / math.ceil(255 / 8)
    metrics = json.load(open(tmp_path / "metrics.json"))
    assert metrics["eval_loss"] == metrics["eval_loss"]
    assert os.path.exists(tmp_path / "completed")


def load_accelerate_config(name):
    import yaml

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "accelerate", name)
    with open(path) as handle:
        return yaml.safe_load(handle)


def test_fsdp_config_names_what_fsdp_qlora_needs():
    config = load_accelerate_config("fsdp_qlora.yaml")
    fsdp = config["fsdp_config"]
    assert config["distributed_type"] == "FSDP" and config["mixed_precision"] == "bf16"
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True and fsdp["fsdp_sync_module_states"] is True
    assert fsdp["fsdp_use_orig_params"] is False
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_deepspeed_config_is_zero3():
    config = load_accelerate_config("deepspeed_zero3.yaml")
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"]["zero_stage"] == 3 and config["deepspeed_config"]["zero3_init_flag"] is True


def test_sharded_launch_stores_4bit_weights_in_bf16(monkeypatch):
    from qlorakit.model import build_quantization_config, sharded_training

    class Args:
        fsdp, deepspeed = "", None

    assert not sharded_training(Args())
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert sharded_training(Args())
    import torch
    config = build_quantization_config(4, compute_dtype=torch.bfloat16, quant_storage=torch.bfloat16)
    assert config.bnb_4bit_quant_storage == torch.bfloat16
