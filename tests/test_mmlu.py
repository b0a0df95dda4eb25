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
