"""A run resumed in its second or third epoch trains the same rows as the uninterrupted run."""

import os
import shutil

import pytest
from safetensors.torch import load_file

from conftest import run_python
from test_qlora_cli import quick_flags

# 16 rows in batches of 4: four steps an epoch, so step 7 lies in epoch 2 and step 10 in epoch 3.
EPOCH_FLAGS = ("--max_train_samples", "16", "--max_steps", "10", "--save_steps", "3", "--lora_dropout", "0.1")


def final_adapter(output_dir):
    return load_file(os.path.join(output_dir, "checkpoint-10", "adapter_model", "adapter_model.safetensors"))


def copy_up_to(source, destination, step):
    """The run as a kill right after checkpoint-<step> would have left it."""
    shutil.copytree(source, destination, ignore=lambda folder, names: [
        name for name in names
        if folder == str(source) and not (name.startswith("checkpoint-") and int(name.split("-")[1]) <= step)])


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    run_python(quick_flags(tiny_model_dir, str(output_dir), *EPOCH_FLAGS))
    return output_dir


@pytest.mark.parametrize("step", [6, 9])  # resume in epoch 2 (at its third step) and in epoch 3
def test_resume_in_a_later_epoch_is_bit_exact(tiny_model_dir, uninterrupted, tmp_path, step):
    resumed = tmp_path / "resumed"
    copy_up_to(uninterrupted, resumed, step)
    result = run_python(quick_flags(tiny_model_dir, str(resumed), *EPOCH_FLAGS))
    assert f"checkpoint-{step}" in result.stderr and "resuming from" in result.stderr
    expected, got = final_adapter(uninterrupted), final_adapter(resumed)
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert got[name].equal(tensor), name
