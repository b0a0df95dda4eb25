"""Shared fixtures: a tiny local LLaMA built once per test session (no download)."""

import logging
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_python(args, cwd=REPO_ROOT, check=True, timeout=600, env=None):
    """Run a repo script as a user would; returns the CompletedProcess with text output."""
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def torchrun(nproc_per_node=2):
    """`python -m torch.distributed.run` on this machine, as arguments for run_python. --standalone
    has the launcher's rendezvous bind a port of the system's choosing and hand it to the ranks, so
    runs in parallel test processes never share a fixed port or race for a probed free one."""
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc_per_node)]


@pytest.fixture
def run_in_process(capsys, monkeypatch):
    """Run a command's console entry point (``module.console_main``) in this process, with the
    arguments as its command line, from the checkout as run_python does; returns a CompletedProcess
    with the exit status and what it printed.

    For bad input that a command refuses in one line, and for runs whose files and printed lines
    are what a test reads: they come from the same code as in a fresh interpreter, without the
    seconds of importing torch and transformers again. Warnings logged on the way reach stderr as
    in a command that configures no logging (Python's last-resort handler; pytest's own log
    handlers would keep them off it); info lines do not. Every command keeps tests that run it as a
    subprocess, for the console path. check: fail unless the exit status is 0, as run_python does.
    """
    def run(module, args, check=False):
        monkeypatch.chdir(REPO_ROOT)
        monkeypatch.setattr(sys, "argv", [os.path.basename(module.__file__), *args])  # argparse's prog
        capsys.readouterr()
        root = logging.getLogger()
        root.addHandler(logging.lastResort)
        try:
            status = module.console_main()
        except SystemExit as stop:
            status = stop.code
        finally:
            root.removeHandler(logging.lastResort)
        out, err = capsys.readouterr()
        status = 0 if status is None else status
        if check and status != 0:
            raise AssertionError(f"{module.__name__} failed ({status}):\n{out[-3000:]}\n{err[-6000:]}")
        return subprocess.CompletedProcess([module.__name__, *args], status, out, err)

    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    run_python([os.path.join(REPO_ROOT, "scripts", "make_tiny_model.py"), str(path)])
    return str(path)


def make_random_adapter(model_dir, path):
    """Save an untrained adapter with random (non-zero) LoRA weights on q_proj and v_proj of the
    causal LM in model_dir to path; returns path."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(base, config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def random_adapter_dir(tiny_model_dir, tmp_path_factory):
    """An untrained adapter with random (non-zero) LoRA weights: enough to load and change outputs."""
    return make_random_adapter(tiny_model_dir, str(tmp_path_factory.mktemp("random-adapter")))
