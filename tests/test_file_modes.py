"""What a run and a merge write is readable as the umask says (the group, a serving process running
as another user), although temporary files and safetensors 0.8's tensor files start owner-only."""

import os
import stat

import pytest

from qlorakit import SAMPLE_DATA_DIR
from qlorakit.cli import train
from qlorakit.cli.merge_adapter import merge_adapter
from qlorakit.jsonl import default_modes, give_default_modes, process_umask, write_json_atomic

# Not the usual 022, so that the modes seen come from the umask and not from a fixed 0o644.
UMASK = 0o027


@pytest.fixture
def umask():
    previous = os.umask(UMASK)
    try:
        yield UMASK
    finally:
        os.umask(previous)


def modes_under(root):
    """{path relative to root: permission bits} of root's folders and files."""
    found = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.stat(path).st_mode)
    return found


def wrong_modes(root):
    """The paths under root whose mode is not the one the umask gives a new file or folder."""
    file_mode, folder_mode = default_modes()
    return {path: oct(mode) for path, mode in modes_under(root).items()
            if mode != (folder_mode if os.path.isdir(os.path.join(root, path)) else file_mode)}


def test_the_umask_is_read_as_set(umask):
    assert process_umask() == UMASK
    assert default_modes() == (0o640, 0o750)


def test_an_atomic_write_has_the_umask_mode(umask, tmp_path):
    write_json_atomic(tmp_path / "record.json", {"a": 1})
    assert stat.S_IMODE(os.stat(tmp_path / "record.json").st_mode) == 0o640


def test_owner_only_files_and_folders_are_given_the_umask_modes(umask, tmp_path):
    folder = tmp_path / "saved"
    (folder / "inner").mkdir(parents=True, mode=0o700)
    for path in (folder / "a.safetensors", folder / "inner" / "b.json"):
        path.write_text("x")
        path.chmod(0o600)
    folder.chmod(0o700)
    give_default_modes(str(folder))
    assert wrong_modes(str(folder)) == {}


def test_checkpoints_final_adapter_and_merged_model_follow_the_umask(umask, tiny_model_dir, tmp_path,
                                                                    run_in_process):
    output_dir = tmp_path / "run"
    run_in_process(train, [
        "--model_name_or_path", tiny_model_dir, "--output_dir", str(output_dir),
        "--dataset", os.path.join(SAMPLE_DATA_DIR, "alpaca_sample.json"), "--use_cpu", "--lora_r", "4",
        "--max_steps", "2", "--save_steps", "1", "--per_device_train_batch_size", "2",
        "--source_max_len", "32", "--target_max_len", "32",
        "--do_eval", "--eval_strategy", "steps", "--eval_steps", "1", "--eval_dataset_size", "4",
        "--load_best_model_at_end", "True"], check=True)
    for written in ("checkpoint-2", "adapter_model", "run_settings.json", "completed", "metrics.json"):
        assert wrong_modes(str(output_dir / written)) == {}, written
    merged = tmp_path / "merged"
    merge_adapter(tiny_model_dir, str(output_dir / "adapter_model"), str(merged), dtype="float32")
    assert (merged / "model.safetensors").is_file()
    assert wrong_modes(str(merged)) == {}


def test_a_file_system_that_refuses_modes_never_fails_a_save(tmp_path, monkeypatch):
    def refuse(path, mode):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "a.safetensors").write_text("x")
    give_default_modes(str(tmp_path / "saved"))
    write_json_atomic(tmp_path / "record.json", {"a": 1})
    assert (tmp_path / "record.json").read_text().strip().startswith("{")
