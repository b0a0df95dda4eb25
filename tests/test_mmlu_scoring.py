"""MMLU scoring through MMLUEvalCallback on models rigged so that the right accuracy is known."""

import json
import os

import pytest
import torch

from qlorakit import SAMPLE_DATA_DIR
from test_qlora_cli import quick_flags

SAMPLE = os.path.join(SAMPLE_DATA_DIR, "mmlu_sample", "zero_shot_mmlu_val.json")
# Questions kept per subject and answer letter: unbalanced, so each letter has its own share.
KEPT = {
    "elementary_mathematics": {"A": 3, "B": 1, "C": 0, "D": 0},
    "high_school_geography": {"A": 1, "B": 0, "C": 3, "D": 2},
    "computer_science_basics": {"A": 0, "B": 2, "C": 1, "D": 3},
    "nutrition": {"A": 2, "B": 3, "C": 3, "D": 1},
}
BOOST = 1e4


def write_unbalanced_mmlu(directory):
    """The sample's questions, thinned to KEPT; returns the rows written."""
    with open(SAMPLE, encoding="utf-8") as handle:
        sample = [json.loads(line) for line in handle if line.strip()]
    rows = []
    for row in sample:
        taken = sum(1 for kept in rows if (kept["subject"], kept["output"]) == (row["subject"], row["output"]))
        if taken < KEPT[row["subject"]][row["output"]]:
            rows.append(row)
    with open(os.path.join(directory, "zero_shot_mmlu_val.json"), "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


@pytest.fixture(scope="module")
def mmlu_setup(tiny_model_dir, tmp_path_factory):
    """A trainer as qlora.py wires it for --do_mmlu_eval (batches of 4 questions of mixed lengths),
    its MMLU callback, and the questions it scores."""
    from qlorakit.callbacks import MMLUEvalCallback
    from qlorakit.config import parse_arguments
    from qlorakit.train import find_callback, setup_trainer

    data_dir = str(tmp_path_factory.mktemp("mmlu"))
    rows = write_unbalanced_mmlu(data_dir)
    flags = quick_flags(tiny_model_dir, str(tmp_path_factory.mktemp("out")), "--max_steps", "1",
                        "--do_mmlu_eval", "--mmlu_data_dir", data_dir, "--mmlu_dataset", "mmlu-zs",
                        "--per_device_eval_batch_size", "4")
    trainer, tokenizer, _ = setup_trainer(parse_arguments(flags[1:]))
    return trainer, find_callback(trainer, MMLUEvalCallback), rows


def score_with_rig(trainer, callback, rig_logits):
    """Run the callback's evaluation with rig_logits(input_ids, logits) editing the head's output."""
    model = trainer.model
    seen = {}

    def keep_input_ids(module, args, kwargs):
        seen["input_ids"] = kwargs["input_ids"]

    def rig(module, inputs, logits):
        return rig_logits(seen["input_ids"], logits.clone())

    handles = [model.register_forward_pre_hook(keep_input_ids, with_kwargs=True),
               model.get_output_embeddings().register_forward_hook(rig)]
    callback.scored = None  # each rig is another model at the same step: score it anew
    try:
        callback.on_evaluate(trainer.args, trainer.state, trainer.control, model=model)
    finally:
        for handle in handles:
            handle.remove()
    return trainer.state.log_history[-1]


def expected_accuracy(rows, is_hit):
    per_subject = {}
    for row in rows:
        per_subject.setdefault(row["subject"], []).append(is_hit(row))
    expected = {f"mmlu_eval_accuracy_{s}": sum(hits) / len(hits) for s, hits in per_subject.items()}
    expected["mmlu_eval_accuracy"] = sum(expected.values()) / len(per_subject)
    return expected


def accuracies(log):
    return {key: value for key, value in log.items() if key.startswith("mmlu_eval_accuracy")}


@pytest.mark.parametrize("letter", ["A", "C"])
def test_a_model_that_always_answers_one_letter_scores_that_letters_share(mmlu_setup, letter):
    trainer, callback, rows = mmlu_setup
    letter_id = callback.choice_ids["ABCD".index(letter)]

    def prefer_letter(input_ids, logits):
        logits[..., letter_id] += BOOST
        return logits

    log = score_with_rig(trainer, callback, prefer_letter)
    assert accuracies(log) == pytest.approx(expected_accuracy(rows, lambda row: row["output"] == letter))
    assert log["mmlu_loss"] > 0


def test_a_model_that_reads_the_answer_key_scores_one_and_one_letter_off_scores_zero(mmlu_setup):
    """Each position is rigged to predict the token that follows it in the batch: the answer
    letter is only known at the row that predicts it, so any other row or column scores less."""
    trainer, callback, rows = mmlu_setup
    choice_ids = torch.tensor(callback.choice_ids)

    def read_key(shift):
        def rig(input_ids, logits):
            following = input_ids[:, 1:].clone()
            is_choice = torch.isin(following, choice_ids)
            letter = (following.unsqueeze(-1) == choice_ids).int().argmax(dim=-1)
            following[is_choice] = choice_ids[(letter[is_choice] + shift) % 4]
            logits[:, :-1].scatter_add_(-1, following.unsqueeze(-1),
                                        torch.full(following.unsqueeze(-1).shape, BOOST, dtype=logits.dtype))
            return logits
        return rig

    assert accuracies(score_with_rig(trainer, callback, read_key(0))) == pytest.approx(
        expected_accuracy(rows, lambda row: True))
    assert accuracies(score_with_rig(trainer, callback, read_key(1))) == pytest.approx(
        expected_accuracy(rows, lambda row: False))
