import pytest
import torch

from qlorakit.collate import IGNORE_INDEX
from qlorakit.errors import DataError
from qlorakit.mmlu import accuracy_by_subject, answer_positions, mmlu_file


def test_accuracy_is_the_mean_over_subjects():
    subjects = ["algebra", "algebra", "algebra", "geography"]
    results = accuracy_by_subject(subjects, [0, 1, 2, 3], [0, 1, 3, 0], split="eval")
    assert results["mmlu_eval_accuracy_algebra"] == pytest.approx(2 / 3)
    assert results["mmlu_eval_accuracy_geography"] == 0.0
    assert results["mmlu_eval_accuracy"] == pytest.approx(1 / 3)


def test_answer_position_is_just_before_the_first_label():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 30, 2], [IGNORE_INDEX, 31, 2, IGNORE_INDEX]])
    assert answer_positions(labels).tolist() == [1, 0]


def test_missing_files_are_explained(tmp_path):
    with pytest.raises(DataError, match="needs --mmlu_data_dir"):
        mmlu_file(None, "mmlu-zs", "eval")
    with pytest.raises(DataError, match="five_shot_mmlu_test.json: no such MMLU file"):
        mmlu_file(str(tmp_path), "mmlu", "test")
    (tmp_path / "zero_shot_mmlu_val.json").write_text("")
    assert mmlu_file(str(tmp_path), "mmlu-zs", "eval").endswith("zero_shot_mmlu_val.json")


def mmlu_run(run_in_process, model_dir, output_dir, *flags):
    """qlora.py with MMLU evaluation (its entry point, in this process); reads the run's JSON files by name."""
    import os

    from qlorakit.cli import train
    from test_qlora_cli import MMLU_DIR, quick_flags

    run_in_process(train, quick_flags(model_dir, output_dir, "--do_eval", "--eval_dataset_size", "4",
                                      "--per_device_eval_batch_size", "4", "--do_mmlu_eval", "--mmlu_data_dir",
                                      MMLU_DIR, "--mmlu_dataset", "mmlu-zs", "--max_mmlu_samples", "4", *flags)[1:],
                   check=True)
    return lambda name: __import__("json").load(open(os.path.join(output_dir, name)))


@pytest.mark.parametrize("flags, files", [
    (("--do_train", "False"), ("eval_results.json", "all_results.json", "metrics.json")),
    (("--max_steps", "1", "--save_steps", "1"), ("eval_results.json", "all_results.json", "metrics.json")),
])
def test_mmlu_scores_are_in_the_saved_eval_metrics(tiny_model_dir, tmp_path, run_in_process, flags, files):
    read = mmlu_run(run_in_process, tiny_model_dir, str(tmp_path), *flags)
    for name in files:
        metrics = read(name)
        assert 0.0 <= metrics["mmlu_eval_accuracy"] <= 1.0 and metrics["mmlu_loss"] > 0, name


def test_weights_already_scored_are_not_scored_again(monkeypatch):
    """The final evaluation right after the last step's evaluation reuses that step's scores."""
    from types import SimpleNamespace

    from qlorakit.callbacks import MMLUEvalCallback

    callback = MMLUEvalCallback.__new__(MMLUEvalCallback)
    callback.scored, logged, calls = None, [], []
    callback.trainer = SimpleNamespace(log=logged.append)
    monkeypatch.setattr(callback, "score", lambda args, model: calls.append(1) or {"mmlu_eval_accuracy": 0.5})
    for step in (6, 12, 12):
        metrics = {"eval_loss": 1.0}
        callback.on_evaluate(None, SimpleNamespace(global_step=step), None, model=None, metrics=metrics)
        assert metrics["mmlu_eval_accuracy"] == 0.5
    assert len(calls) == 2 and len(logged) == 2
