"""A run survives SIGKILL, skips torn checkpoints and NaN steps, and keeps secrets out of outputs."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, run_python
from qlorakit import checkpoints
from qlorakit.cli import train as train_cli
from test_qlora_cli import quick_flags

RESUME_FLAGS = ("--max_steps", "6", "--save_steps", "3", "--lora_dropout", "0.1", "--save_total_limit", "1")


def step_losses(output_dir):
    state = json.load(open(os.path.join(output_dir, "trainer_state.json")))
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def adapter_weights(output_dir, step):
    return load_file(os.path.join(output_dir, f"checkpoint-{step}", "adapter_model", "adapter_model.safetensors"))


def kill_after_checkpoint(command, checkpoint_dir, timeout=300):
    """Start a run and SIGKILL it the moment the checkpoint is marked complete."""
    process = subprocess.Popen([sys.executable, *command], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    marker = os.path.join(checkpoint_dir, "checkpoint_complete")
    while not os.path.exists(marker):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode


def test_a_killed_run_resumes_to_the_same_losses_and_weights(tiny_model_dir, tmp_path):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    run_python(quick_flags(tiny_model_dir, straight, *RESUME_FLAGS))
    returncode = kill_after_checkpoint(quick_flags(tiny_model_dir, killed, *RESUME_FLAGS),
                                       os.path.join(killed, "checkpoint-3"))
    assert returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(killed, "completed"))

    result = run_python(quick_flags(tiny_model_dir, killed, *RESUME_FLAGS))
    assert "resuming from" in result.stderr and "checkpoint-3" in result.stderr
    expected, resumed = step_losses(straight), step_losses(killed)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-4)
    for name, tensor in adapter_weights(straight, 6).items():
        torch.testing.assert_close(adapter_weights(killed, 6)[name], tensor, atol=1e-5, rtol=0)
    assert sorted(p for p in os.listdir(killed) if p.startswith("checkpoint-")) == ["checkpoint-6"]


def test_a_torn_checkpoint_is_skipped_for_the_previous_one(tiny_model_dir, tmp_path, run_in_process):
    output_dir = str(tmp_path)
    run_in_process(train_cli, quick_flags(tiny_model_dir, output_dir, "--max_steps", "3", "--save_steps", "3")[1:],
                   check=True)
    os.remove(os.path.join(output_dir, "completed"))
    torn = os.path.join(output_dir, "checkpoint-5")
    shutil.copytree(os.path.join(output_dir, "checkpoint-3"), torn)
    os.remove(os.path.join(torn, "checkpoint_complete"))
    with open(os.path.join(torn, "optimizer.pt"), "r+b") as handle:
        handle.truncate(10)

    result = run_python(quick_flags(tiny_model_dir, output_dir, "--max_steps", "4", "--save_steps", "4"))
    assert "checkpoint-5 cannot be trusted" in result.stderr
    assert "resuming from" in result.stderr and "checkpoint-3" in result.stderr
    assert os.path.exists(os.path.join(output_dir, "checkpoint-4", "checkpoint_complete"))


def test_an_explicit_incomplete_checkpoint_is_refused(tiny_model_dir, tmp_path, run_in_process):
    torn = tmp_path / "checkpoint-2"
    torn.mkdir()
    flags = quick_flags(tiny_model_dir, str(tmp_path), "--resume_from_checkpoint", str(torn))
    result = run_in_process(train_cli, flags[1:])
    assert result.returncode == 2
    assert "no checkpoint_complete marker" in result.stderr.strip().splitlines()[-1]


def test_a_checkpoint_without_optimizer_state_is_not_resumed(tiny_model_dir, tmp_path, run_in_process):
    """Resuming without optimizer.pt would silently change every later loss: fall back instead."""
    output_dir = str(tmp_path)
    run_in_process(train_cli, quick_flags(tiny_model_dir, output_dir, "--max_steps", "4", "--save_steps", "2")[1:],
                   check=True)
    os.remove(os.path.join(output_dir, "completed"))
    os.remove(os.path.join(output_dir, "checkpoint-4", "optimizer.pt"))
    result = run_python(quick_flags(tiny_model_dir, output_dir, "--max_steps", "5", "--save_steps", "5"))
    assert "checkpoint-4 cannot be trusted, skipping it: optimizer.pt is missing" in result.stderr
    assert "resuming from" in result.stderr and "checkpoint-2" in result.stderr
    assert checkpoints.verify_checkpoint(os.path.join(output_dir, "checkpoint-5")) == []


def fail_on_save(trainer, monkeypatch, step):
    """Make the optimizer save of `step` fail as a full disk does."""
    real = trainer._save_optimizer_and_scheduler

    def save(output_dir):
        if trainer.state.global_step == step:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(output_dir)

    monkeypatch.setattr(trainer, "_save_optimizer_and_scheduler", save)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_stops_in_one_line(tiny_model_dir, tmp_path,
                                                                                       monkeypatch):
    from qlorakit.config import parse_arguments
    from qlorakit.train import setup_trainer

    arguments = parse_arguments(quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "4", "--save_steps", "2",
                                            "--save_total_limit", "1")[1:])
    trainer, _, _ = setup_trainer(arguments)
    fail_on_save(trainer, monkeypatch, 4)
    with pytest.raises(checkpoints.CheckpointSaveError, match="saving .*checkpoint-4 failed: .*No space left"):
        trainer.train()
    assert checkpoints.verify_checkpoint(str(tmp_path / "checkpoint-2")) == []
    assert not checkpoints.is_complete(str(tmp_path / "checkpoint-4"))


def test_a_checkpoint_saved_again_loses_its_marker_before_its_files_change(tiny_model_dir, tmp_path, monkeypatch,
                                                                          run_in_process):
    """Resumed from checkpoint-2, the run saves checkpoint-4 again; torn, it must not look complete."""
    from qlorakit.config import parse_arguments
    from qlorakit.train import setup_trainer

    flags = quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "4", "--save_steps", "2")
    run_in_process(train_cli, flags[1:], check=True)
    arguments = parse_arguments([*flags[1:], "--resume_from_checkpoint", str(tmp_path / "checkpoint-2")])
    trainer, _, _ = setup_trainer(arguments, str(tmp_path / "checkpoint-2"))
    fail_on_save(trainer, monkeypatch, 4)
    with pytest.raises(checkpoints.CheckpointSaveError):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert not checkpoints.is_complete(str(tmp_path / "checkpoint-4"))
    assert checkpoints.find_resume_checkpoint(str(tmp_path))[0] == str(tmp_path / "checkpoint-2")


def train_with_nan_at(tiny_model_dir, output_dir, bad_steps, *flags):
    from qlorakit.config import parse_arguments
    from qlorakit.train import setup_trainer

    arguments = parse_arguments(quick_flags(tiny_model_dir, output_dir, *flags)[1:])
    trainer, _, _ = setup_trainer(arguments)
    head = trainer.model.get_output_embeddings()

    def poison(module, inputs, output):
        if trainer.state.global_step + 1 in bad_steps:
            return output * float("nan")
        return None

    head.register_forward_hook(poison)
    return trainer, arguments


def test_nan_steps_are_skipped_and_counted(tiny_model_dir, tmp_path, caplog):
    from qlorakit.callbacks import NonFiniteGuardCallback

    trainer, _ = train_with_nan_at(tiny_model_dir, str(tmp_path), {2, 4}, "--max_steps", "5", "--save_steps", "5")
    trainer.train()
    guard = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, NonFiniteGuardCallback))
    assert guard.skipped == 2
    assert "step 2: non-finite" in caplog.text and "step 4: non-finite" in caplog.text
    weights = adapter_weights(str(tmp_path), 5)
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_too_many_nan_steps_in_a_row_stop_with_a_good_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    from qlorakit import train
    from qlorakit.errors import TrainingStopped

    trainer, arguments = train_with_nan_at(tiny_model_dir, str(tmp_path), set(range(3, 100)), "--max_steps", "20",
                                           "--save_steps", "50", "--max_consecutive_nonfinite_steps", "3")
    monkeypatch.setattr(train, "setup_trainer", lambda *args: (trainer, trainer.processing_class, None))
    with pytest.raises(TrainingStopped, match="stopped at step 5: 3 steps in a row"):
        train.run(arguments)
    assert os.path.exists(tmp_path / "checkpoint-5" / "checkpoint_complete")
    assert not (tmp_path / "completed").exists()
    assert all(torch.isfinite(t).all() for t in adapter_weights(str(tmp_path), 5).values())


def test_hub_token_never_reaches_logs_or_files(tiny_model_dir, tmp_path):
    secret = "hf_SECRETtoken1234567890"
    result = run_python(quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "1", "--save_steps", "1",
                                    "--hub_token", secret))
    assert secret not in result.stdout + result.stderr
    for folder, _, files in os.walk(tmp_path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                assert secret.encode() not in handle.read(), name
    adapter_dir = tmp_path / "checkpoint-1" / "adapter_model"
    assert not [name for name in os.listdir(adapter_dir) if name.endswith(".bin")]


def test_sigterm_checkpoints_the_current_step_and_resumes(tiny_model_dir, tmp_path):
    command = quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "400", "--save_steps", "1000")
    process = subprocess.Popen([sys.executable, *command], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:  # training has begun once a step's loss is logged
        if "'loss'" in line:
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    message = stderr.strip().splitlines()[-1]
    assert "stopped by SIGTERM at step" in message and "run the same command to resume" in message
    step = int(message.split("at step ")[1].split(";")[0])
    assert 1 <= step < 400
    assert os.path.exists(tmp_path / f"checkpoint-{step}" / "checkpoint_complete")
    assert not (tmp_path / "completed").exists()

    result = run_python(quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", str(step + 2), "--save_steps", "1000"))
    assert f"checkpoint-{step}" in result.stderr and (tmp_path / "completed").exists()
    assert sorted(step_losses(str(tmp_path))) == list(range(1, step + 3))


def test_fault_injection_short_form(tiny_model_dir, tmp_path, capsys):
    """benchmarks/fault_injection.py's kill during a save (corruptions: test_checkpoints and the long form),
    with 2 micro-batches per step instead of 16: still accumulated steps to resume, 1/8 of the work."""
    import fault_injection

    status = fault_injection.main(["--model_dir", tiny_model_dir, "--work_dir", str(tmp_path),
                                   "--scenarios", "mid-save-kill", "--gradient_accumulation_steps", "2"])
    assert "mid-save-kill: ok" in capsys.readouterr().out
    assert status == 0
