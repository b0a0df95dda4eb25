"""Ctrl-C during training: the current step finishes, a checkpoint is saved, the exit status is
130 and the message says how to resume."""

import os
import signal
import subprocess
import sys

from conftest import REPO_ROOT
from test_qlora_cli import quick_flags


def start_training(command):
    """A training process whose log has shown a step's loss (training has begun)."""
    process = subprocess.Popen([sys.executable, *command], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if "'loss'" in line:
            return process
    raise AssertionError(f"training never logged a loss: {process.communicate()[1][-3000:]}")


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tiny_model_dir, tmp_path):
    process = start_training(quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "400", "--save_steps", "1000"))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Ctrl-C: finishing the current step, then saving a checkpoint" in stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("error: stopped by SIGINT at step ") and "run the same command to resume" in message
    step = int(message.split("at step ")[1].split(";")[0])
    assert 1 <= step < 400
    assert os.path.exists(tmp_path / f"checkpoint-{step}" / "checkpoint_complete")
    assert not (tmp_path / "completed").exists()
