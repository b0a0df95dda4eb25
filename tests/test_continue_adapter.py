"""--adapter_name_or_path: a new run trains on from an existing adapter, with a fresh optimizer.

The oracle is a straight run of 2N steps whose optimizer state is cleared after step N (a
callback): continuing the adapter of an N-step run for N steps must end on the same weights.
Everything else is held equal: LoRA dropout 0, a constant learning rate without warmup, and four
rows of distinct lengths in one batch, so every step sees the same batch in the same order (with
two rows of equal length their order inside the batch changes from epoch to epoch, which moved
the fp32 weights by 2.7e-5). Measured gap: 0.0 in fp32; without the reset it is 1.5e-2.
"""

import json
import os
import shutil

import pytest
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import run_python
from qlorakit import SAMPLE_DATA_DIR
from qlorakit.cli import train as train_cli

ALPACA = os.path.join(SAMPLE_DATA_DIR, "alpaca_sample.json")
STEPS = 3  # N
TOLERANCE = 1e-6  # largest weight difference allowed; measured 0.0
WARNING = "was trained with"  # the line that names the LoRA flags ignored


def flags(model_dir, output_dir, *extra):
    """fp32, one batch of the first four rows (171, 179, 188 and 145 tokens) per step, no LoRA flags."""
    return ["--model_name_or_path", model_dir, "--output_dir", str(output_dir), "--dataset", ALPACA,
            "--dataset_format", "alpaca", "--use_cpu", "--bf16", "False", "--max_train_samples", "4",
            "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--source_max_len", "64",
            "--target_max_len", "128", "--learning_rate", "0.003", "--warmup_ratio", "0", "--logging_steps", "1",
            "--seed", "0", *extra]


FIRST_RUN_LORA = ("--lora_r", "8", "--lora_alpha", "16")


def adapter_weights(output_dir, step):
    return load_file(os.path.join(output_dir, f"checkpoint-{step}", "adapter_model", "adapter_model.safetensors"))


def largest_gap(first, second):
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


def warning_lines(result):
    return [line for line in result.stderr.splitlines() if WARNING in line]


@pytest.fixture(scope="module")
def first_run(tiny_model_dir, tmp_path_factory):
    """An N-step run (qlora.py's entry point, in this process): the adapter to continue from."""
    output_dir = tmp_path_factory.mktemp("first")
    assert train_cli.main(flags(tiny_model_dir, output_dir, *FIRST_RUN_LORA, "--max_steps", str(STEPS),
                                "--save_steps", str(STEPS))) == 0
    return output_dir


class ClearOptimizerAfter(TrainerCallback):
    """Forget the optimizer's moments and step counts after `step`: from there it is a new optimizer."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step == self.step:
            optimizer.state.clear()


def straight_run(tiny_model_dir, output_dir, reset_at=None):
    """2N steps in one run (in this process), the optimizer cleared after step `reset_at`."""
    from qlorakit.config import parse_arguments
    from qlorakit.train import setup_trainer

    arguments = parse_arguments(flags(tiny_model_dir, output_dir, *FIRST_RUN_LORA, "--max_steps", str(2 * STEPS),
                                      "--save_steps", str(2 * STEPS)))
    trainer, _, _ = setup_trainer(arguments)
    if reset_at:
        trainer.add_callback(ClearOptimizerAfter(reset_at))
    trainer.train()
    return adapter_weights(output_dir, 2 * STEPS)


def test_continuing_n_steps_equals_a_straight_run_with_the_optimizer_reset_at_n(tiny_model_dir, first_run, tmp_path):
    continued = tmp_path / "continued"
    result = run_python(["qlora.py", *flags(tiny_model_dir, continued, "--adapter_name_or_path", str(first_run),
                                            "--max_steps", str(STEPS), "--save_steps", str(STEPS))])
    assert f"newest complete checkpoint of {first_run}" in result.stderr  # the run folder was resolved
    assert "fresh optimizer" in result.stderr
    assert warning_lines(result) == []  # LoRA flags left at their defaults (r 64) are not reported
    got = adapter_weights(continued, STEPS)
    assert largest_gap(got, straight_run(tiny_model_dir, tmp_path / "reset", reset_at=STEPS)) <= TOLERANCE
    # The comparison can tell: the optimizer state carried over, or no training at all, is far off.
    assert largest_gap(got, straight_run(tiny_model_dir, tmp_path / "kept")) > 1000 * TOLERANCE
    assert largest_gap(got, adapter_weights(first_run, STEPS)) > 1000 * TOLERANCE


def test_the_adapters_lora_settings_win_and_the_flags_given_are_named_as_ignored(tiny_model_dir, first_run, tmp_path,
                                                                                 run_in_process):
    """The adapter has r 8, alpha 16, dropout 0 on every linear layer. Given: r 4 and dropout 0.1
    (differ), alpha 16 (agrees); --lora_modules is left at its default and not compared."""
    continued = tmp_path / "continued"
    result = run_in_process(train_cli, flags(tiny_model_dir, continued, "--adapter_name_or_path",
                                             os.path.join(first_run, f"checkpoint-{STEPS}"), "--lora_r", "4",
                                             "--lora_dropout", "0.1", "--lora_alpha", "16", "--max_steps", "1",
                                             "--save_steps", "1"), check=True)
    [line] = warning_lines(result)
    assert "lora_r=8 (flags: 4)" in line and "lora_dropout=0.0 (flags: 0.1)" in line and "ignored" in line
    assert "lora_alpha" not in line and "targets" not in line
    saved = json.load(open(continued / "checkpoint-1" / "adapter_model" / "adapter_config.json"))
    assert (saved["r"], saved["lora_alpha"], saved["lora_dropout"]) == (8, 16, 0.0)
    trained = adapter_weights(continued, 1)
    assert trained.keys() == adapter_weights(first_run, STEPS).keys()
    assert {tensor.shape[0] for name, tensor in trained.items() if "lora_A" in name} == {8}


def test_the_base_loads_as_the_adapter_was_trained_unless_a_flag_says_otherwise(tiny_model_dir, first_run, tmp_path,
                                                                                 run_in_process):
    """The adapter's record says fp4 without double quant: fp4 stays (--quant_type not given),
    --double_quant True is given and wins, named in one line."""
    adapter = tmp_path / "adapter"
    shutil.copytree(first_run / f"checkpoint-{STEPS}" / "adapter_model", adapter)
    record_path = adapter / "base_loading.json"
    record = json.load(open(record_path))
    record_path.write_text(json.dumps({**record, "quant_type": "fp4", "double_quant": False}))
    continued = tmp_path / "continued"
    result = run_in_process(train_cli, flags(tiny_model_dir, continued, "--adapter_name_or_path", str(adapter),
                                             "--double_quant", "True", "--max_steps", "1", "--save_steps", "1"),
                            check=True)
    [line] = [line for line in result.stderr.splitlines() if "trained on a base loaded with" in line]
    assert "double_quant=False (flags: True)" in line and "quant_type" not in line
    saved = json.load(open(continued / "checkpoint-1" / "adapter_model" / "base_loading.json"))
    assert (saved["bits"], saved["quant_type"], saved["double_quant"]) == (4, "fp4", True)


def test_a_checkpoint_in_the_output_dir_is_resumed_instead_and_that_is_said(tiny_model_dir, first_run, tmp_path):
    interrupted = tmp_path / "run"
    shutil.copytree(first_run, interrupted)
    os.remove(interrupted / "completed")  # as if killed after its last checkpoint
    other = tmp_path / "other"
    shutil.copytree(first_run / f"checkpoint-{STEPS}" / "adapter_model", other)
    result = run_python(["qlora.py", *flags(tiny_model_dir, interrupted, *FIRST_RUN_LORA, "--adapter_name_or_path",
                                            str(other), "--max_steps", str(STEPS + 1), "--save_steps", "1")])
    [line] = [line for line in result.stderr.splitlines() if "--adapter_name_or_path" in line]
    assert "is not loaded" in line and f"checkpoint-{STEPS}" in line
    assert f"resuming from {interrupted / f'checkpoint-{STEPS}'}" in result.stderr
    assert (interrupted / f"checkpoint-{STEPS + 1}" / "checkpoint_complete").is_file()


def test_resume_from_checkpoint_pointed_at_an_adapter_names_the_adapter_flag(tiny_model_dir, first_run, tmp_path,
                                                                             run_in_process):
    adapter = os.path.join(first_run, f"checkpoint-{STEPS}", "adapter_model")
    result = run_in_process(train_cli, flags(tiny_model_dir, tmp_path / "run", "--resume_from_checkpoint", adapter,
                                             "--max_steps", "1"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and f"--adapter_name_or_path {adapter}" in last and "marker" not in last


@pytest.mark.parametrize("adapter, message", [
    ("./no/such/adapter_model", "no adapter_config.json there"),
    ("nobody/no-such-adapter", "cannot read the adapter config"),  # offline: a hub id that cannot be fetched
])
def test_an_adapter_that_is_not_there_is_one_line_before_the_base_loads(tiny_model_dir, tmp_path, run_in_process,
                                                                        adapter, message):
    result = run_in_process(train_cli, flags(tiny_model_dir, tmp_path / "run", "--adapter_name_or_path", adapter))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert "trainable params" not in result.stdout


def test_an_adapter_of_another_base_is_one_line(tiny_model_dir, random_adapter_dir):
    """Same architecture, other sizes: peft's size-mismatch error becomes a ModelError naming the adapter."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from qlorakit.errors import ModelError
    from qlorakit.lora import load_adapter

    wider = AutoConfig.from_pretrained(tiny_model_dir)
    wider.hidden_size, wider.intermediate_size = 320, 960
    with pytest.raises(ModelError, match=f"{random_adapter_dir}: its weights do not fit the base "):
        load_adapter(AutoModelForCausalLM.from_config(wider), random_adapter_dir)


def test_full_finetune_and_an_adapter_exclude_each_other():
    from qlorakit.config import parse_arguments
    from qlorakit.errors import ArgumentError

    with pytest.raises(ArgumentError, match="--adapter_name_or_path trains on a LoRA adapter; --full_finetune"):
        parse_arguments(["--full_finetune", "--bits", "16", "--adapter_name_or_path", "some/adapter"])
