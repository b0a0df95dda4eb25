"""Data parallel on CPU: two torchrun processes with the gloo backend."""

import json
import math
import os

import pytest
from conftest import run_python, torchrun
from test_qlora_cli import quick_flags


def test_two_process_data_parallel_run(tiny_model_dir, tmp_path):
    flags = quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "4", "--save_steps", "4",
                        "--lora_dropout", "0.1", "--do_eval", "--eval_dataset_size", "8", "--group_by_length")
    result = run_python([*torchrun(2), *flags])
    log = result.stdout + result.stderr
    assert log.count("world size: 2") == 1  # printed once, by rank 0
    assert log.count("--group_by_length True is read as --train_sampling_strategy group_by_length") == 1
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


def readme_flags(*args, **kwargs):
    """quick_flags as the README writes them: no --use_cpu, the machine decides."""
    return [flag for flag in quick_flags(*args, **kwargs) if flag != "--use_cpu"]


def logged_losses(output_dir):
    state = json.load(open(os.path.join(output_dir, "trainer_state.json")))
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_readme_command_without_a_gpu_is_data_parallel(tiny_model_dir, tmp_path):
    """Two ranks of batch 4 take the same steps as one process of batch 8: the same rows (the
    random sampler's order, sharded batch by batch), the same mean loss and the same update."""
    parallel, single = tmp_path / "parallel", tmp_path / "single"
    result = run_python([*torchrun(2), *readme_flags(tiny_model_dir, str(parallel), "--max_steps", "3")])
    log = result.stdout + result.stderr
    assert log.count("no GPU or other accelerator found: training on the CPU") == 1
    assert "trained weights identical on all 2 ranks" in log
    alone = run_python(readme_flags(tiny_model_dir, str(single), "--max_steps", "3",
                                    "--per_device_train_batch_size", "8"))
    assert "trained weights identical" not in alone.stdout + alone.stderr
    parallel_losses, single_losses = logged_losses(parallel), logged_losses(single)
    assert len(parallel_losses) == 3
    assert parallel_losses == pytest.approx(single_losses, rel=1e-4)  # bf16: 2e-5 apart after two updates
