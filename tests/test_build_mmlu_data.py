import json
import os

import pytest
from datasets import Dataset, DatasetDict

from conftest import REPO_ROOT

from qlorakit.cli import build_mmlu_data

SHARED_MMLU = os.path.join(REPO_ROOT, "..", "shared", "reference", "qlora-data", "mmlu", "zero_shot_mmlu_val.json")


def make_rows(subject, count, offset=0):
    return [{"question": f"{subject} question {i + offset}?", "subject": subject,
             "choices": [f"opt{j}" for j in range(4)], "answer": (i + offset) % 4} for i in range(count)]


def test_builds_zero_and_five_shot_files_from_the_hub_layout(tmp_path, monkeypatch):
    stand_in = DatasetDict({
        "dev": Dataset.from_list(make_rows("home_cooking", 5, offset=100)),
        "validation": Dataset.from_list(make_rows("home_cooking", 3)),
        "test": Dataset.from_list(make_rows("home_cooking", 2)),
    })
    requested = []
    monkeypatch.setattr(build_mmlu_data, "load_dataset", lambda *a: requested.append(a) or stand_in)
    build_mmlu_data.main(["--output_dir", str(tmp_path)])
    assert requested == [("cais/mmlu", "all")]
    assert sorted(os.listdir(tmp_path)) == ["five_shot_mmlu_test.json", "five_shot_mmlu_val.json",
                                            "zero_shot_mmlu_test.json", "zero_shot_mmlu_val.json"]
    zero = [json.loads(line) for line in open(tmp_path / "zero_shot_mmlu_val.json")]
    five = [json.loads(line) for line in open(tmp_path / "five_shot_mmlu_val.json")]
    assert [row["output"] for row in zero] == ["A", "B", "C"]
    assert zero[1]["input"].endswith("home_cooking question 1?\nA. opt0\nB. opt1\nC. opt2\nD. opt3\nAnswer:")
    assert five[1]["input"].count("Answer:") == 6 and "question 104?" in five[1]["input"]
    assert five[1]["input"].endswith(zero[1]["input"].split("\n\n", 1)[1])


@pytest.mark.skipif(not os.path.exists(SHARED_MMLU), reason="reference MMLU file not beside the repo")
def test_rebuilds_the_reference_prompt_files_byte_for_byte():
    for line in open(SHARED_MMLU).readlines()[:50]:
        reference = json.loads(line)
        question_block = reference["input"].split("\n\n", 1)[1]
        lines = question_block.split("\n")
        row = {"question": "\n".join(lines[:-5]), "choices": [l[3:] for l in lines[-5:-1]],
               "answer": "ABCD".index(reference["output"]), "subject": reference["subject"]}
        assert build_mmlu_data.build_rows([row], {}, 0)[0] == reference
