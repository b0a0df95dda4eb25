"""Collators: labels, padding and attention masks of training and generation batches, and
padding-free packing whose loss equals the padded batch's."""

import pytest
import torch

from qlorakit.collate import IGNORE_INDEX, CausalLMCollator, padded_batch


@pytest.mark.parametrize("left, ids, mask", [
    (False, [[7, 8, 9], [5, 0, 0]], [[1, 1, 1], [1, 0, 0]]),
    (True, [[7, 8, 9], [0, 0, 5]], [[1, 1, 1], [0, 0, 1]]),
])
def test_padded_batch_pads_to_the_longest_row_on_either_side(left, ids, mask):
    batch = padded_batch([[7, 8, 9], [5]], pad_token_id=0, left=left)
    assert batch["input_ids"].tolist() == ids and batch["attention_mask"].tolist() == mask
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long


class TestCollator:
    features = [
        {"source_ids": [1, 10, 11], "target_ids": [20, 2]},
        {"source_ids": [1, 12], "target_ids": [21, 22, 23, 2]},
    ]

    def test_labels_mask_the_source_and_the_padding(self):
        batch = CausalLMCollator(pad_token_id=0)(self.features)
        assert batch["input_ids"].tolist() == [[1, 10, 11, 20, 2, 0], [1, 12, 21, 22, 23, 2]]
        assert batch["labels"].tolist() == [[IGNORE_INDEX] * 3 + [20, 2, IGNORE_INDEX],
                                            [IGNORE_INDEX] * 2 + [21, 22, 23, 2]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1] * 6]

    def test_train_on_source_keeps_source_labels(self):
        batch = CausalLMCollator(pad_token_id=0, train_on_source=True)(self.features)
        assert batch["labels"][0].tolist() == [1, 10, 11, 20, 2, IGNORE_INDEX]

    def test_generation_feeds_the_source_padded_on_the_left(self):
        batch = CausalLMCollator(pad_token_id=0, for_generation=True)(self.features)
        assert batch["input_ids"].tolist() == [[1, 10, 11], [0, 1, 12]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
        assert "labels" not in batch

    def test_mask_is_right_even_when_pad_equals_a_real_token(self):
        batch = CausalLMCollator(pad_token_id=2)(self.features)
        assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0]


class TestPaddingFree:
    def test_rows_are_concatenated_with_positions_restarting(self):
        batch = CausalLMCollator(pad_token_id=0, padding_free=True)(TestCollator.features)
        assert batch["input_ids"].tolist() == [[1, 10, 11, 20, 2, 1, 12, 21, 22, 23, 2]]
        assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]]
        assert batch["labels"].tolist() == [[IGNORE_INDEX] * 3 + [20, 2] + [IGNORE_INDEX] * 2 + [21, 22, 23, 2]]

    def test_the_first_label_of_each_example_is_never_a_target(self):
        batch = CausalLMCollator(pad_token_id=0, train_on_source=True, padding_free=True)(TestCollator.features)
        labels = batch["labels"][0].tolist()
        assert labels[0] == IGNORE_INDEX and labels[5] == IGNORE_INDEX and labels[1] == 10


def test_padding_free_loss_equals_the_padded_loss(tiny_model_dir):
    """Packed examples must not attend to each other: per-token losses agree with padded batches."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    features = [{"source_ids": [1, 50, 60, 70], "target_ids": [80, 90, 2]},
                {"source_ids": [1, 55], "target_ids": [65, 75, 85, 95, 105, 2]},
                {"source_ids": [1, 52, 53], "target_ids": [54, 2]}]
    with torch.no_grad():
        padded = model(**CausalLMCollator(pad_token_id=0)(features)).loss
        flat = model(**CausalLMCollator(pad_token_id=0, padding_free=True)(features)).loss
        alone = [model(**CausalLMCollator(pad_token_id=0)([f])).loss for f in features]
    torch.testing.assert_close(flat, padded, atol=5e-6, rtol=0)
    # and the packed loss is the token-weighted mean of each example alone
    weights = torch.tensor([len(f["target_ids"]) for f in features], dtype=torch.float32)
    torch.testing.assert_close(flat, (torch.stack(alone) * weights).sum() / weights.sum(), atol=5e-6, rtol=0)
