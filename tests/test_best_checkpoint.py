"""--load_best_model_at_end ends a run on its best checkpoint's adapter, rotation keeps that checkpoint,
and --early_stopping_patience stops training where the metric stopped improving."""

import json
import os

import pytest
from transformers import TrainerState, TrainingArguments

from conftest import run_python
from qlorakit import checkpoints
from qlorakit.cli import train as train_cli
from qlorakit.config import ArgumentError
from test_config import parse
from test_guards import assert_refused
from test_qlora_cli import MMLU_DIR, quick_flags

# Evaluated and saved at every step. The rig: training lowers the eval loss from the first step
# on, and --greater_is_better True makes the highest eval loss the best, so the best checkpoint is
# checkpoint-1 while training goes on past it.
EVERY_STEP = ("--eval_strategy", "steps", "--eval_steps", "1", "--save_steps", "1", "--eval_dataset_size", "8",
              "--per_device_eval_batch_size", "8")
BEST_FLAGS = (*EVERY_STEP, "--load_best_model_at_end", "True", "--metric_for_best_model", "eval_loss",
              "--greater_is_better", "True", "--save_total_limit", "1")


def read_json(path):
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def eval_losses(output_dir):
    """{step: eval_loss} of the evaluations during training."""
    history = read_json(os.path.join(output_dir, "trainer_state.json"))["log_history"]
    return {entry["step"]: entry["eval_loss"] for entry in history if "eval_loss" in entry}


def adapter_bytes(output_dir, step=None):
    """The adapter weights file of checkpoint-{step}, or of the final adapter (step None); None if absent."""
    folder = os.path.join(output_dir, f"checkpoint-{step}" if step else "", "adapter_model")
    path = os.path.join(folder, "adapter_model.safetensors")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as stream:
        return stream.read()


@pytest.fixture(scope="module")
def best_run(tiny_model_dir, tmp_path_factory):
    """Two steps, then (as after a kill before the run finished) two more resumed from checkpoint-2.
    Returns the folder, each part's output, and the first part's final adapter and evaluation."""
    output_dir = str(tmp_path_factory.mktemp("best"))
    first = run_python(quick_flags(tiny_model_dir, output_dir, "--max_steps", "2", *BEST_FLAGS))
    first_part = {"final_adapter": adapter_bytes(output_dir), "checkpoint_1": adapter_bytes(output_dir, 1),
                  "eval_loss": read_json(os.path.join(output_dir, "eval_results.json"))["eval_loss"]}
    os.remove(os.path.join(output_dir, "completed"))
    second = run_python(quick_flags(tiny_model_dir, output_dir, "--max_steps", "4", *BEST_FLAGS))
    losses = eval_losses(output_dir)
    assert sorted(losses) == [1, 2, 3, 4] and max(losses, key=losses.get) == 1, f"the rig failed: {losses}"
    return output_dir, first.stdout + first.stderr, second.stdout + second.stderr, first_part


def test_the_best_checkpoints_adapter_is_reloaded_bit_exact_as_the_final_adapter(best_run):
    output_dir, first_log, _, first_part = best_run
    best_loss = eval_losses(output_dir)[1]
    assert f"best checkpoint: checkpoint-1 (eval_loss {best_loss:.4g}) loaded as the final adapter: " \
           f"{output_dir}/adapter_model" in first_log
    assert first_part["final_adapter"] is not None and first_part["final_adapter"] == first_part["checkpoint_1"]
    final = adapter_bytes(output_dir)
    assert final is not None and final == adapter_bytes(output_dir, 1) and final != adapter_bytes(output_dir, 4)
    # The evaluation after training scores the model in memory: the reloaded best. (An evaluation after
    # training differs from one during it by up to 1e-4 for the same weights; steps differ by 0.03 or more.)
    for final_loss in (first_part["eval_loss"], read_json(os.path.join(output_dir, "eval_results.json"))["eval_loss"]):
        assert final_loss == pytest.approx(best_loss, abs=1e-3)


def test_save_total_limit_1_keeps_the_best_checkpoint_beside_the_newest(best_run):
    output_dir = best_run[0]
    assert sorted(name for name in os.listdir(output_dir) if name.startswith("checkpoint-")) == \
        ["checkpoint-1", "checkpoint-4"]
    assert checkpoints.verify_checkpoint(os.path.join(output_dir, "checkpoint-1")) == []
    recorded = read_json(os.path.join(output_dir, "trainer_state.json"))["best_model_checkpoint"]
    assert os.path.basename(recorded) == "checkpoint-1" and os.path.isdir(recorded)


def test_a_resumed_run_ends_on_the_best_checkpoint_found_before_it_stopped(best_run):
    output_dir, _, resumed_log, _ = best_run
    assert f"resuming from {output_dir}/checkpoint-2" in resumed_log
    assert "best checkpoint: checkpoint-1 (eval_loss" in resumed_log
    assert "loaded as the final adapter" in resumed_log


def test_early_stopping_stops_when_the_metric_stops_improving_and_saves_that_step(tiny_model_dir, tmp_path,
                                                                                   run_in_process):
    """The rig: no evaluation improves mmlu_loss by more than 100, so with patience 2 the third
    evaluation (step 3) stops training, between two scheduled saves (every 5 steps)."""
    output_dir = str(tmp_path)
    result = run_in_process(train_cli, quick_flags(
        tiny_model_dir, output_dir, "--max_steps", "10", *EVERY_STEP, "--save_steps", "5",
        "--do_mmlu_eval", "--mmlu_data_dir", MMLU_DIR, "--mmlu_dataset", "mmlu-zs", "--max_mmlu_samples", "8",
        "--metric_for_best_model", "mmlu_loss", "--early_stopping_patience", "2", "--early_stopping_threshold",
        "100")[1:], check=True)
    state = read_json(os.path.join(output_dir, "trainer_state.json"))
    mmlu_losses = {entry["step"]: entry["mmlu_loss"] for entry in state["log_history"] if "mmlu_loss" in entry}
    assert state["global_step"] == 3 and sorted(mmlu_losses) == [1, 2, 3]
    assert checkpoints.list_checkpoints(output_dir) == [os.path.join(output_dir, "checkpoint-3")]
    assert checkpoints.verify_checkpoint(os.path.join(output_dir, "checkpoint-3")) == []
    assert os.path.isfile(os.path.join(output_dir, "completed"))
    best_step = min(mmlu_losses, key=mmlu_losses.get)
    assert (f"early stopping at step 3: mmlu_loss did not improve by more than 100 for 2 evaluations; best: step "
            f"{best_step} (mmlu_loss {mmlu_losses[best_step]:.4g}), which has no checkpoint") in result.stdout


def test_a_metric_the_evaluation_never_logs_stops_the_run_in_one_line(tiny_model_dir, tmp_path, run_in_process):
    result = run_in_process(train_cli, quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "2", *EVERY_STEP,
                                                   "--load_best_model_at_end", "True",
                                                   "--metric_for_best_model", "accuracy")[1:])
    assert_refused(result, "--metric_for_best_model accuracy", "logged no such metric", "eval_loss")


@pytest.mark.parametrize("flags, words", [
    (("--load_best_model_at_end", "True"), "--load_best_model_at_end compares evaluations"),
    (("--load_best_model_at_end", "True", "--eval_strategy", "steps", "--eval_steps", "2", "--save_steps", "4"),
     "--save_steps 4 must equal --eval_steps 2"),
    (("--load_best_model_at_end", "True", "--eval_strategy", "epoch"),
     "--save_strategy steps and --eval_strategy epoch must match"),
    (("--load_best_model_at_end", "True", "--eval_strategy", "steps", "--eval_steps", "50", "--save_steps", "50",
      "--max_steps", "10"), "--eval_steps 50 exceeds --max_steps 10"),
    (("--early_stopping_patience", "2"), "--early_stopping_patience compares evaluations"),
    (("--early_stopping_patience", "2", "--eval_strategy", "steps"), "watches --metric_for_best_model"),
    (("--early_stopping_patience", "0", "--eval_strategy", "steps", "--metric_for_best_model", "eval_loss"),
     "must be at least 1"),
    (("--early_stopping_threshold", "0.1"), "applies with --early_stopping_patience"),
    (("--metric_for_best_model", "mmlu_eval_accuracy"), "pass --do_mmlu_eval True"),
])
def test_combinations_that_cannot_pick_a_best_checkpoint_or_stop_are_refused(flags, words):
    with pytest.raises(ArgumentError, match=words):
        parse(*flags)


def test_early_stopping_keeps_its_count_across_a_resume(tmp_path):
    from qlorakit.callbacks import EarlyStopping

    args = TrainingArguments(str(tmp_path), eval_strategy="steps", metric_for_best_model="eval_loss")
    saved = EarlyStopping(3).state()
    saved["attributes"]["early_stopping_patience_counter"] = 2
    resumed = EarlyStopping(3)
    resumed.on_train_begin(args, TrainerState(stateful_callbacks={"EarlyStopping": saved}), None)
    assert resumed.early_stopping_patience_counter == 2
    # A checkpoint saved without early stopping holds no count; the Trainer then saves one into it.
    state = TrainerState()
    EarlyStopping(3).on_train_begin(args, state, None)
    assert state.stateful_callbacks["EarlyStopping"]["attributes"]["early_stopping_patience_counter"] == 0
