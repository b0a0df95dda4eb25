import os

from qlorakit import checkpoints, jsonl


def make_checkpoint(output_dir, step, complete=True, adapter=True):
    path = output_dir / f"checkpoint-{step}"
    path.mkdir()
    (path / "trainer_state.json").write_text("{}")
    if adapter:
        (path / "adapter_config.json").write_text("{}")
        (path / "adapter_model.safetensors").write_bytes(b"weights")
    if complete:
        checkpoints.finalize_checkpoint(str(path))
    return path


def test_finalize_moves_the_adapter_into_the_reference_layout(tmp_path):
    path = make_checkpoint(tmp_path, 3)
    assert sorted(os.listdir(path / "adapter_model")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not (path / "adapter_model.safetensors").exists()
    assert checkpoints.is_complete(str(path))


def test_resume_skips_a_torn_checkpoint(tmp_path, caplog):
    make_checkpoint(tmp_path, 5)
    make_checkpoint(tmp_path, 10, complete=False)
    checkpoint, completed = checkpoints.find_resume_checkpoint(str(tmp_path))
    assert checkpoint == str(tmp_path / "checkpoint-5") and not completed
    assert "checkpoint-10 is incomplete" in caplog.text


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


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    jsonl.write_jsonl_atomic(str(tmp_path / "rows.jsonl"), [{"a": 1}, {"b": "é"}])
    assert (tmp_path / "rows.jsonl").read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'
    assert os.listdir(tmp_path) == ["rows.jsonl"]
