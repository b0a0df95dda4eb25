"""What the machine and launcher suggest: CPU without an accelerator, and a world size that matches."""

import pytest

from qlorakit import launcher
from qlorakit.config import parse_arguments
from qlorakit.errors import ArgumentError

BASE = ["--model_name_or_path", "m", "--output_dir", "o"]


def test_without_an_accelerator_training_defaults_to_the_cpu(monkeypatch, caplog):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    defaults = launcher.environment_defaults(accelerator_available=False, cuda_available=False)
    assert defaults == {"use_cpu": True}
    assert parse_arguments([*BASE, "--bf16"], defaults).training.use_cpu is True
    assert caplog.text.count("no GPU or other accelerator found: training on the CPU") == 1


def test_the_users_use_cpu_wins_without_a_notice(monkeypatch, caplog):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    defaults = launcher.environment_defaults(accelerator_available=False, cuda_available=False)
    assert parse_arguments([*BASE, "--use_cpu", "False"], defaults).training.use_cpu is False
    assert "no GPU" not in caplog.text


def test_an_accelerator_changes_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launcher.environment_defaults(accelerator_available=True, cuda_available=True) == {}


def test_a_trainer_running_fewer_processes_than_launched_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    launcher.check_world_size(2)
    with pytest.raises(ArgumentError, match="started 2 processes but the Trainer runs 1"):
        launcher.check_world_size(1)
