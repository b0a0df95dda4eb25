"""The plan line printed before training, from the training arguments alone."""

import argparse

from qlorakit.train import completed_run_plan, describe_final_weights, describe_plan


def reference_args(**overrides):
    values = dict(max_steps=10000, num_train_epochs=3, per_device_train_batch_size=1, gradient_accumulation_steps=16,
                  world_size=1, output_dir="out", save_strategy="steps", load_best_model_at_end=False)
    return argparse.Namespace(**{**values, **overrides})


def test_the_reference_default_run_is_spelled_out():
    assert describe_plan(reference_args(), 9846) == (
        "plan: 10000 steps x 16 rows (1 per device x 16 accumulation x 1 processes) = 160000 rows = "
        "16.3 epochs of 9846 training rows; adapter -> out/checkpoint-10000/adapter_model")


def test_epochs_without_max_steps_and_a_full_finetune():
    plan = describe_plan(reference_args(max_steps=-1, num_train_epochs=2, per_device_train_batch_size=4,
                                        gradient_accumulation_steps=2, world_size=2), 100, full_finetune=True)
    assert plan.startswith("plan: 13 steps x 16 rows (4 per device x 2 accumulation x 2 processes) = 208 rows")
    assert plan.endswith("; model -> out/checkpoint-13")


def test_with_load_best_model_at_end_the_plan_names_the_final_adapter():
    assert describe_plan(reference_args(load_best_model_at_end=True), 9846).endswith(
        "; adapter -> out/adapter_model (the best checkpoint's)")


def test_the_final_line_names_the_newest_checkpoint(tmp_path):
    for step in (5, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert describe_final_weights(str(tmp_path)) == f"final adapter: {tmp_path}/checkpoint-10/adapter_model"
    assert "not saved" in describe_final_weights(str(tmp_path / "empty"))


def test_a_finished_run_says_what_it_does_instead_of_training():
    asked = argparse.Namespace(do_eval=True, do_predict=False)
    assert completed_run_plan(asked, "run/checkpoint-6") == "evaluating run/checkpoint-6"
    nothing = completed_run_plan(argparse.Namespace(do_eval=False, do_predict=False), "run/checkpoint-6")
    assert nothing.startswith("nothing else to do") and "evaluating" not in nothing
