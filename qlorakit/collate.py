"""Collators: tokenized rows (qlorakit.data) into padded or packed batches for the trainer.

Labels are -100 (``IGNORE_INDEX``, what the loss skips) wherever no token is to be learned: the
source (unless --train_on_source), the user turns of a conversation, and padding.
"""

from dataclasses import dataclass

import torch
from transformers import DataCollatorWithFlattening

IGNORE_INDEX = -100


def pad_rows(rows, value, left=False):
    width = max(len(row) for row in rows)
    padded = [([value] * (width - len(row)) + row) if left else (row + [value] * (width - len(row))) for row in rows]
    return torch.tensor(padded, dtype=torch.long)


def padded_batch(rows, pad_token_id, left=False):
    """input_ids padded to the longest row, and the attention mask of the real tokens."""
    return {"input_ids": pad_rows(rows, pad_token_id, left),
            "attention_mask": pad_rows([[1] * len(row) for row in rows], 0, left)}


@dataclass
class CausalLMCollator:
    """Pads pre-tokenized rows into a batch.

    Training: source + target, labels -100 on the source (unless train_on_source) and on
    padding; a conversation's labels are its assistant tokens (all tokens with train_on_source).
    Padded on the right, or with padding_free, all rows of the batch concatenated into one row
    with position ids restarting per example (transformers' flattening collator): no padding
    tokens are computed, and the attention keeps the examples apart (needs use_cache off, as in
    training). Generation: the source alone, padded on the left so that every
    row's prompt ends where generation starts.
    """

    pad_token_id: int
    train_on_source: bool = False
    for_generation: bool = False
    padding_free: bool = False

    def __post_init__(self):
        self.flatten = DataCollatorWithFlattening(return_tensors="pt")

    def training_row(self, feature):
        if "assistant_mask" in feature:  # a conversation: tokenized whole, its assistant tokens marked
            ids = list(feature["input_ids"])
            if self.train_on_source:
                return {"input_ids": ids, "labels": list(ids)}
            return {"input_ids": ids,
                    "labels": [t if trained else IGNORE_INDEX for t, trained in zip(ids, feature["assistant_mask"])]}
        source, target = feature["source_ids"], feature["target_ids"]
        labels = (source if self.train_on_source else [IGNORE_INDEX] * len(source)) + target
        return {"input_ids": source + target, "labels": labels}

    def __call__(self, features):
        if self.for_generation:
            return self.pad_for_generation([f["source_ids"] for f in features])
        rows = [self.training_row(f) for f in features]
        if self.padding_free:
            return self.flatten(rows)
        batch = padded_batch([row["input_ids"] for row in rows], self.pad_token_id)
        batch["labels"] = pad_rows([row["labels"] for row in rows], IGNORE_INDEX)
        return batch

    def pad_for_generation(self, sources):
        return padded_batch(sources, self.pad_token_id, left=True)


@dataclass
class Seq2SeqCollator:
    """Pads pre-tokenized rows for an encoder-decoder model: the source goes to the encoder, the
    target is the labels (the model shifts them right into its decoder input), so the loss is on
    the target only. Generation feeds the source alone."""

    pad_token_id: int
    for_generation: bool = False

    def __call__(self, features):
        batch = padded_batch([f["source_ids"] for f in features], self.pad_token_id)
        if not self.for_generation:
            batch["labels"] = pad_rows([f["target_ids"] for f in features], IGNORE_INDEX)
        return batch
