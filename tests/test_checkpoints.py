import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from qlorakit import checkpoints, jsonl
from qlorakit.errors import CheckpointError


def make_checkpoint(output_dir, step, complete=True, adapter=True):
    """A checkpoint with the files a resume reads, small but each readable by its loader."""
    path = output_dir / f"checkpoint-{step}"
    path.mkdir()
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"step": step, "state": torch.arange(8.0)}, path / name)
    if adapter:
        (path / "adapter_config.json").write_text("{}")
        save_file({"lora_A": torch.full((4, 4), float(step))}, str(path / "adapter_model.safetensors"))
    if complete:
        checkpoints.finalize_checkpoint(str(path))
    return path


def test_finalize_moves_the_adapter_into_the_reference_layout(tmp_path):
    path = make_checkpoint(tmp_path, 3)
    assert sorted(os.listdir(path / "adapter_model")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not (path / "adapter_model.safetensors").exists()
    assert checkpoints.verify_checkpoint(str(path)) == []


def test_the_marker_lists_every_file_with_its_size_and_the_adapter_hash(tmp_path):
    path = make_checkpoint(tmp_path, 3)
    manifest = json.loads((path / "checkpoint_complete").read_text())
    weights = os.path.join("adapter_model", "adapter_model.safetensors")
    assert set(manifest["files"]) == {"trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                                      os.path.join("adapter_model", "adapter_config.json"), weights}
    assert manifest["files"]["optimizer.pt"]["size"] == os.path.getsize(path / "optimizer.pt")
    assert manifest["files"][weights]["sha256"] == checkpoints.file_sha256(str(path / weights))


def test_resume_skips_a_torn_checkpoint(tmp_path, caplog):
    make_checkpoint(tmp_path, 5)
    make_checkpoint(tmp_path, 10, complete=False)
    checkpoint, completed = checkpoints.find_resume_checkpoint(str(tmp_path))
    assert checkpoint == str(tmp_path / "checkpoint-5") and not completed
    assert "checkpoint-10 cannot be trusted" in caplog.text and "no checkpoint_complete marker" in caplog.text


def corrupt_missing_optimizer(path):
    os.remove(path / "optimizer.pt")


def corrupt_trainer_state_garbage(path):  # same size: only a parse can tell
    state = path / "trainer_state.json"
    state.write_bytes(b"\x00" * state.stat().st_size)


def corrupt_truncated_adapter(path):
    with open(path / "adapter_model" / "adapter_model.safetensors", "r+b") as handle:
        handle.truncate(40)


def corrupt_adapter_bytes_flipped(path):  # same size, still parses: only the hash can tell
    weights = path / "adapter_model" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))


def corrupt_rng_state_garbage(path):
    rng = path / "rng_state.pth"
    rng.write_bytes(b"\xff" * rng.stat().st_size)


def corrupt_empty_optimizer(path):
    (path / "optimizer.pt").write_bytes(b"")


def corrupt_missing_adapter(path):
    shutil.rmtree(path / "adapter_model")


CORRUPTIONS = {
    "missing optimizer.pt": (corrupt_missing_optimizer, "optimizer.pt is missing"),
    "garbage trainer_state.json": (corrupt_trainer_state_garbage, "trainer_state.json: invalid JSON"),
    "truncated adapter": (corrupt_truncated_adapter, "adapter_model.safetensors has 40 bytes"),
    "adapter bytes changed": (corrupt_adapter_bytes_flipped, "differs from the saved file"),
    "garbage rng_state.pth": (corrupt_rng_state_garbage, "rng_state.pth: not a readable torch file"),
    "empty optimizer.pt": (corrupt_empty_optimizer, "optimizer.pt has 0 bytes"),
    "no adapter_model/": (corrupt_missing_adapter, "adapter_model.safetensors is missing"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, corruption):
    corrupt, reason = CORRUPTIONS[corruption]
    make_checkpoint(tmp_path, 4)
    corrupt(make_checkpoint(tmp_path, 6))
    checkpoint, _ = checkpoints.find_resume_checkpoint(str(tmp_path))
    assert checkpoint == str(tmp_path / "checkpoint-4")
    assert "checkpoint-6 cannot be trusted" in caplog.text and reason in caplog.text


@pytest.mark.parametrize("corruption", ["missing optimizer.pt", "garbage rng_state.pth", "truncated adapter"])
def test_an_empty_marker_from_earlier_versions_gets_the_content_checks(tmp_path, caplog, corruption):
    old = make_checkpoint(tmp_path, 4)
    (old / "checkpoint_complete").write_text("")
    assert checkpoints.find_resume_checkpoint(str(tmp_path))[0] == str(old)
    assert "marker from an earlier version" in caplog.text
    corrupt, _ = CORRUPTIONS[corruption]
    corrupt(old)
    assert checkpoints.verify_checkpoint(str(old))


def test_no_trustworthy_checkpoint_left_is_an_error_not_a_fresh_start(tmp_path):
    corrupt_missing_optimizer(make_checkpoint(tmp_path, 2))
    make_checkpoint(tmp_path, 4, complete=False)
    with pytest.raises(CheckpointError, match="none of its 2 checkpoints can be trusted"):
        checkpoints.find_resume_checkpoint(str(tmp_path))


def test_only_torn_checkpoints_start_over_and_say_so(tmp_path, caplog):
    """A kill during the first save left nothing that was ever complete: nothing to lose."""
    make_checkpoint(tmp_path, 2, complete=False)
    assert checkpoints.find_resume_checkpoint(str(tmp_path)) == (None, False)
    assert "no checkpoint was completed before the run stopped; training starts from step 0" in caplog.text


def test_an_explicit_damaged_checkpoint_is_refused(tmp_path):
    path = make_checkpoint(tmp_path, 2)
    corrupt_missing_optimizer(path)
    with pytest.raises(CheckpointError, match="cannot be trusted.*optimizer.pt is missing"):
        checkpoints.check_explicit_checkpoint(str(path))


def test_steps_sort_numerically_and_completed_runs_are_seen(tmp_path):
    make_checkpoint(tmp_path, 9)
    make_checkpoint(tmp_path, 10)
    checkpoints.mark_run_completed(str(tmp_path))
    assert checkpoints.find_resume_checkpoint(str(tmp_path)) == (str(tmp_path / "checkpoint-10"), True)


def test_rotation_keeps_the_newest_complete_ones(tmp_path):
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 4, complete=False)
    checkpoints.rotate_checkpoints(str(tmp_path), keep=1)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3", "checkpoint-4"]


def test_rotation_removes_the_marker_before_any_file(tmp_path, monkeypatch):
    """A kill during deletion must not leave a 'complete' checkpoint without its adapter."""
    for step in (1, 2):
        make_checkpoint(tmp_path, step)
    marker_when_deleting = []
    monkeypatch.setattr(checkpoints.shutil, "rmtree", lambda path, **kwargs: marker_when_deleting.append(
        checkpoints.is_complete(path)))
    checkpoints.rotate_checkpoints(str(tmp_path), keep=1)
    assert marker_when_deleting == [False]


def test_adapter_files_are_fsynced_before_the_marker(tmp_path, monkeypatch):
    events = []
    real_fsync, real_write = os.fsync, checkpoints.write_json_atomic
    monkeypatch.setattr(checkpoints.os, "fsync", lambda fd: events.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    monkeypatch.setattr(checkpoints, "write_json_atomic", lambda *a: events.append("marker") or real_write(*a))
    make_checkpoint(tmp_path, 1)
    weights = str(tmp_path / "checkpoint-1" / "adapter_model" / "adapter_model.safetensors")
    assert weights in events and events.index(weights) < events.index("marker")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    jsonl.write_jsonl_atomic(str(tmp_path / "rows.jsonl"), [{"a": 1}, {"b": "é"}])
    assert (tmp_path / "rows.jsonl").read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'
    assert os.listdir(tmp_path) == ["rows.jsonl"]


def test_a_torch_save_that_fails_for_space_is_a_one_line_save_error(tmp_path):
    with pytest.raises(checkpoints.CheckpointSaveError, match="saving .*checkpoint-2 failed"):
        with checkpoints.save_errors_reported(str(tmp_path / "checkpoint-2")):
            # what torch.save raised when writing to /dev/full (a full disk)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    with pytest.raises(RuntimeError, match="a bug"):
        with checkpoints.save_errors_reported(str(tmp_path / "checkpoint-2")):
            raise RuntimeError("a bug")


def test_inference_trusts_a_checkpoint_whose_optimizer_state_was_deleted(tmp_path):
    path = make_checkpoint(tmp_path, 4)
    os.remove(path / "optimizer.pt")
    assert checkpoints.verify_checkpoint(str(path)) == ["optimizer.pt is missing"]
    assert checkpoints.verify_checkpoint(str(path), adapter_only=True) == []
    assert checkpoints.find_resume_checkpoint(str(tmp_path), adapter_only=True)[0] == str(path)


def test_inference_still_refuses_a_changed_adapter(tmp_path):
    older = make_checkpoint(tmp_path, 2)
    newer = make_checkpoint(tmp_path, 4)
    save_file({"lora_A": torch.zeros(4, 4)}, str(newer / "adapter_model" / "adapter_model.safetensors"))
    problems = checkpoints.verify_checkpoint(str(newer), adapter_only=True)
    assert problems == [os.path.join("adapter_model", "adapter_model.safetensors") + " differs from the saved "
                        "file (SHA-256)"]
    assert checkpoints.find_resume_checkpoint(str(tmp_path), adapter_only=True)[0] == str(older)
