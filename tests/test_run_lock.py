"""One run per output folder: the lock, its stale-lock takeover, and refusal under torchrun; a
resume with changed training settings is refused unless asked for."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import run_python, torchrun
from qlorakit import run_lock
from test_qlora_cli import quick_flags


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(output_dir, pid, host=None):
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, run_lock.LOCK_FILE), "w") as f:
        json.dump({"pid": pid, "host": host or socket.gethostname(), "started": 0}, f)


class TestAcquire:
    def test_a_free_folder_is_taken_and_released(self, tmp_path):
        path = run_lock.acquire(str(tmp_path / "out"))
        assert json.load(open(path))["pid"] == os.getpid()
        run_lock.release(path)
        assert not os.path.exists(path)

    def test_a_live_holder_refuses_with_its_pid(self, tmp_path):
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            write_lock(tmp_path, holder.pid)
            with pytest.raises(run_lock.RunLocked, match=f"locked .*pid {holder.pid}"):
                run_lock.acquire(str(tmp_path))
        finally:
            holder.kill()
            holder.wait()

    def test_a_holder_on_another_host_is_respected(self, tmp_path):
        write_lock(tmp_path, dead_pid(), host="elsewhere.example")
        with pytest.raises(run_lock.RunLocked, match="elsewhere.example"):
            run_lock.acquire(str(tmp_path))

    def test_a_dead_holder_on_this_host_is_taken_over(self, tmp_path, caplog):
        write_lock(tmp_path, dead_pid())
        path = run_lock.acquire(str(tmp_path))
        assert json.load(open(path))["pid"] == os.getpid()
        assert "stale lock" in caplog.text

    def test_release_leaves_another_holders_lock(self, tmp_path):
        write_lock(tmp_path, 1)
        run_lock.release(os.path.join(tmp_path, run_lock.LOCK_FILE))
        assert os.path.exists(os.path.join(tmp_path, run_lock.LOCK_FILE))


class TestAppending:
    def test_the_file_is_locked_while_held_and_freed_after_even_on_error(self, tmp_path):
        output = str(tmp_path / "answers" / "a.jsonl")
        with pytest.raises(KeyError):
            with run_lock.appending(output):
                assert json.load(open(f"{output}.lock"))["pid"] == os.getpid()
                with pytest.raises(run_lock.RunLocked, match=f"{output} is locked by another run .* pass -x"):
                    with run_lock.appending(output, "pass -x"):
                        pass
                raise KeyError("the command failed")
        assert not os.path.exists(f"{output}.lock")

    def test_a_killed_writers_lock_is_taken_over(self, tmp_path, caplog):
        output = tmp_path / "a.jsonl"
        (tmp_path / "a.jsonl.lock").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
        with run_lock.appending(str(output)):
            pass
        assert "stale lock" in caplog.text and not os.path.exists(f"{output}.lock")


def test_a_locked_folder_refuses_a_second_run_on_every_rank(tiny_model_dir, tmp_path):
    write_lock(tmp_path, os.getpid())  # this test process stands in for the first run
    single = run_python(quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "1"), check=False)
    assert single.returncode == 2
    assert single.stderr.strip().splitlines()[-1].startswith("error:")
    assert "locked" in single.stderr and f"pid {os.getpid()}" in single.stderr
    parallel = run_python([*torchrun(2), *quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "1")], check=False,
                          timeout=300)
    assert parallel.returncode != 0
    assert parallel.stderr.count(f"is locked by another run (pid {os.getpid()}") == 2  # both ranks, no hang
    assert not any(name.startswith("checkpoint-") for name in os.listdir(tmp_path))


def test_a_resume_with_another_learning_rate_needs_consent(tiny_model_dir, tmp_path, run_in_process):
    from qlorakit.cli import train

    flags = ("--max_train_samples", "16", "--max_steps", "3", "--save_steps", "2")
    first = tmp_path / "first"
    run_in_process(train, quick_flags(tiny_model_dir, str(first), *flags)[1:], check=True)
    assert not os.path.exists(first / run_lock.LOCK_FILE)  # released at the end
    resumed = tmp_path / "resumed"
    shutil.copytree(first, resumed, ignore=lambda folder, names: [
        name for name in names if folder == str(first) and name in ("completed", "checkpoint-3")])
    changed = [*flags, "--learning_rate", "0.002"]  # quick_flags trains at 0.003
    refused = run_in_process(train, quick_flags(tiny_model_dir, str(resumed), *changed)[1:])
    assert refused.returncode == 2
    assert "learning_rate 0.003 -> 0.002" in refused.stderr.strip().splitlines()[-1]
    agreed = run_python(quick_flags(tiny_model_dir, str(resumed), *changed, "--resume_with_changed_args", "True"))
    assert "resuming" in agreed.stderr and "changed settings: learning_rate 0.003 -> 0.002" in agreed.stderr
    state = json.load(open(resumed / "checkpoint-3" / "trainer_state.json"))
    assert "a changed learning_rate does not take effect" in agreed.stderr
    assert state["log_history"][-2]["learning_rate"] == pytest.approx(0.003)  # as the warning says


def test_a_resume_on_an_edited_data_file_needs_consent(tiny_model_dir, tmp_path, run_in_process):
    """The same --dataset path with other rows in it: the seeded order would go on over other rows."""
    from qlorakit.cli import train
    from test_qlora_cli import ALPACA

    data = tmp_path / "data.json"
    shutil.copy(ALPACA, data)
    flags = ("--dataset", str(data), "--max_train_samples", "16", "--max_steps", "3", "--save_steps", "2")
    run_in_process(train, quick_flags(tiny_model_dir, str(tmp_path / "run"), *flags)[1:], check=True)
    saved = json.load(open(tmp_path / "run" / "run_settings.json"))["train_data"]
    assert saved.startswith("16 rows, sha256 ")
    os.remove(tmp_path / "run" / "completed")
    shutil.rmtree(tmp_path / "run" / "checkpoint-3")
    rows = json.load(open(data))
    data.write_text(json.dumps([{**row, "output": "Edited. " + row["output"]} for row in rows]))

    refused = run_in_process(train, quick_flags(tiny_model_dir, str(tmp_path / "run"), *flags)[1:])
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert f"(train_data {saved} -> 16 rows, sha256 " in line and "--resume_with_changed_args True" in line


def test_the_schedule_and_clipping_are_compared_on_resume(tiny_model_dir):
    from qlorakit.config import parse_arguments
    from qlorakit.run_settings import changed_settings, training_settings

    def settings(*flags):
        return training_settings(parse_arguments(["--model_name_or_path", tiny_model_dir, "--output_dir", "o",
                                                  "--use_cpu", *flags]))

    assert changed_settings(settings(), settings("--warmup_ratio", "0.1", "--max_grad_norm", "1.0")) == [
        "warmup_steps 0.03 -> 0.1", "max_grad_norm 0.3 -> 1.0"]
