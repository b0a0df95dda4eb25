"""A step skipped for NaN gradients leaves the adapter and the optimizer state bit for bit as they were."""

import copy

import torch
from transformers import TrainerCallback

from test_resilience import train_with_nan_at


class SnapshotAfterEachStep(TrainerCallback):
    """Copies of the LoRA tensors and the optimizer state at the start and after every step."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.snapshots = []

    def take(self):
        model = self.trainer.model
        lora = {name: param.detach().clone() for name, param in model.named_parameters() if "lora_" in name}
        self.snapshots.append((lora, copy.deepcopy(self.trainer.optimizer.state_dict())))

    def on_train_begin(self, args, state, control, **kwargs):
        self.take()

    def on_step_end(self, args, state, control, **kwargs):
        self.take()


def identical(a, b):
    """Bit-identical nested state: tensors by torch.equal (same dtype and shape), the rest by ==."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


def test_a_skipped_nan_step_changes_no_lora_tensor_and_no_optimizer_state(tiny_model_dir, tmp_path):
    trainer, _ = train_with_nan_at(tiny_model_dir, str(tmp_path), {2}, "--max_steps", "3", "--save_steps", "10")
    recorder = SnapshotAfterEachStep(trainer)
    trainer.add_callback(recorder)
    trainer.train()

    (initial, _), (after_1, optimizer_1), (after_2, optimizer_2), (after_3, optimizer_3) = recorder.snapshots
    assert initial and optimizer_1["state"], "the first step must create optimizer state to compare"
    assert not identical(after_1, initial)  # a good step moves the adapter
    assert [name for name in after_1 if not torch.equal(after_2[name], after_1[name])] == []
    assert identical(optimizer_2, optimizer_1)
    assert not identical(after_3, after_2) and not identical(optimizer_3, optimizer_2)
    assert all(torch.isfinite(tensor).all() for tensor in after_3.values())


# Bad input that would train something else than asked: one line, exit 2, before the model loads,
# and nothing left in the output folder that a later run would trust.

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

from conftest import run_python  # noqa: E402
from qlorakit.cli import train as train_cli  # noqa: E402
from test_qlora_cli import quick_flags  # noqa: E402


def assert_refused(result, *words):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines and lines[-1].startswith("error: ") and all(word in lines[-1] for word in words), lines[-3:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, words", [
    (("--source_max_len", "0"), ("--source_max_len",)),
    (("--target_max_len", "0"), ("--target_max_len",)),
    (("--max_seq_len", "1"), ("--max_seq_len",)),
    (("--lora_r", "0"), ("--lora_r",)),
    (("--learning_rate", "nan"), ("--learning_rate",)),
    (("--learning_rate", "inf"), ("--learning_rate",)),
    (("--learning_rate", "-0.001"), ("--learning_rate",)),
    (("--max_steps", "-5", "--num_train_epochs", "0"), ("0 steps",)),
])
def test_a_bad_number_is_one_line_before_loading(tiny_model_dir, tmp_path, run_in_process, flags, words):
    output_dir = tmp_path / "run"
    result = run_in_process(train_cli, quick_flags(tiny_model_dir, str(output_dir), "--max_steps", "1", *flags)[1:])
    assert_refused(result, *words)
    assert not output_dir.exists() or os.listdir(output_dir) == []


def test_an_output_dir_that_is_a_file_is_one_line(tiny_model_dir, tmp_path, run_in_process):
    output_file = tmp_path / "taken"
    output_file.write_text("mine")
    result = run_in_process(train_cli, quick_flags(tiny_model_dir, str(output_file), "--max_steps", "1")[1:])
    assert_refused(result, "--output_dir")
    assert output_file.read_text() == "mine"


@pytest.mark.parametrize("line, words", [
    ("lora_r: [8, 16]", ("lora_r", "single value")),
    ("learning_rate: {peak: 0.1}", ("learning_rate", "single value")),
    ("max_steps: 2.5", ("max_steps", "int")),
    ("learning_rate: fast", ("learning_rate", "float")),
])
def test_a_config_file_value_of_the_wrong_type_is_one_line(tmp_path, run_in_process, line, words):
    config = tmp_path / "run.yaml"
    config.write_text(f"model_name_or_path: {tmp_path}\noutput_dir: {tmp_path / 'run'}\n{line}\n")
    assert_refused(run_in_process(train_cli, [str(config)]), str(config), *words)


def test_a_config_file_number_written_as_yaml_string_is_read_as_a_number(tmp_path):
    from qlorakit.config import parse_arguments

    config = tmp_path / "run.yaml"
    config.write_text(f"model_name_or_path: {tmp_path}\nlearning_rate: 2e-4\nmax_steps: '7'\n")
    args = parse_arguments([str(config)])
    assert args.training.learning_rate == 2e-4 and args.training.max_steps == 7


def test_a_tokenizer_without_eos_is_refused_instead_of_training_the_text_none(tiny_model_dir, tmp_path,
                                                                            run_in_process):
    model_dir = tmp_path / "no-eos"
    shutil.copytree(tiny_model_dir, model_dir)
    for name, key in (("tokenizer_config.json", "eos_token"), ("config.json", "eos_token_id")):
        config = json.loads((model_dir / name).read_text())
        config[key] = None
        (model_dir / name).write_text(json.dumps(config))
    result = run_in_process(train_cli, quick_flags(str(model_dir), str(tmp_path / "run"), "--max_steps", "1")[1:])
    assert_refused(result, "eos")


def test_a_zero_step_run_never_writes_completed(tiny_model_dir, tmp_path):
    """max_steps 0 trains by epochs; the Trainer's own 0-step end must not mark the folder done."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from qlorakit.callbacks import CheckpointCallback

    state = TrainerState(max_steps=0, global_step=0)
    CheckpointCallback(1).on_train_end(TrainingArguments(str(tmp_path)), state, TrainerControl())
    assert not (tmp_path / "completed").exists()


def test_a_stale_completed_marker_without_checkpoint_is_named_and_training_runs(tiny_model_dir, tmp_path):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "completed").write_text("")
    result = run_python(quick_flags(tiny_model_dir, str(output_dir), "--max_steps", "1", "--save_steps", "1"))
    assert "'completed' marker but no checkpoint" in result.stderr
    assert (output_dir / "checkpoint-1" / "adapter_model").is_dir()
    assert json.loads((output_dir / "metrics.json").read_text())["train_loss"] > 0
