"""MMLU evaluation in the reference's prompt-file format (fields input, output, subject).

The model reads a multiple-choice prompt ending in "Answer:"; its prediction is whichever of the
tokens for A, B, C, D gets the highest logit at the answer position. Accuracy is computed here,
not by a hub metric script, so it runs offline.
"""

import os

from datasets import load_dataset

from .collate import IGNORE_INDEX
from .data import tokenize_dataset
from .errors import DataError

CHOICES = ("A", "B", "C", "D")
MMLU_FILES = {
    ("mmlu-zs", "eval"): "zero_shot_mmlu_val.json",
    ("mmlu-zs", "test"): "zero_shot_mmlu_test.json",
    ("mmlu-fs", "eval"): "five_shot_mmlu_val.json",
    ("mmlu-fs", "test"): "five_shot_mmlu_test.json",
}


def mmlu_file(data_dir, mmlu_dataset, split):
    """Path of the prompt file for a dataset flavour and split; a clear error if it is missing."""
    flavour = "mmlu-fs" if mmlu_dataset == "mmlu" else mmlu_dataset
    if not data_dir:
        raise DataError("--do_mmlu_eval needs --mmlu_data_dir (build the files with scripts/build_mmlu_data.py)")
    path = os.path.join(data_dir, MMLU_FILES[(flavour, split)])
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such MMLU file (build it with scripts/build_mmlu_data.py)")
    return path


def load_mmlu(mmlu_args, tokenizer):
    path = mmlu_file(mmlu_args.mmlu_data_dir, mmlu_args.mmlu_dataset, mmlu_args.mmlu_split)
    dataset = load_dataset("json", data_files={"eval": path})["eval"]
    if mmlu_args.max_mmlu_samples is not None and len(dataset) > mmlu_args.max_mmlu_samples:
        dataset = dataset.select(range(mmlu_args.max_mmlu_samples))
    return tokenize_dataset(dataset, tokenizer, mmlu_args.mmlu_source_max_len, target_max_len=2, split="MMLU")


def choice_token_ids(tokenizer):
    """Token id of each answer letter as it follows 'Answer:' in the target."""
    return [tokenizer(letter, add_special_tokens=False).input_ids[0] for letter in CHOICES]


def answer_positions(labels, shift=1):
    """Index of the logit row that predicts each row's first label token: the one before it for a
    causal model (shift 1), the same one for an encoder-decoder's decoder (shift 0)."""
    first_label = (labels != IGNORE_INDEX).int().argmax(dim=1)
    return first_label - shift


def accuracy_by_subject(subjects, predictions, references, split="eval"):
    """Accuracy per subject and their mean (the reference's macro average), keyed like the reference."""
    per_subject = {}
    for subject, predicted, reference in zip(subjects, predictions, references):
        per_subject.setdefault(subject, []).append(predicted == reference)
    results = {f"mmlu_{split}_accuracy_{s}": sum(hits) / len(hits) for s, hits in sorted(per_subject.items())}
    if per_subject:
        results[f"mmlu_{split}_accuracy"] = sum(results.values()) / len(per_subject)
    return results
