"""Encoder-decoder (T5) training: collator, MMLU answer positions, and a qlora.py run with MMLU."""

import json
import os

import torch

from qlorakit import SAMPLE_DATA_DIR
from qlorakit.collate import IGNORE_INDEX, Seq2SeqCollator
from qlorakit.mmlu import answer_positions


def test_the_source_goes_to_the_encoder_and_the_loss_is_on_the_target_only():
    collator = Seq2SeqCollator(pad_token_id=0)
    batch = collator([{"source_ids": [5, 6, 7], "target_ids": [8, 1]}, {"source_ids": [9], "target_ids": [10, 11, 1]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[8, 1, IGNORE_INDEX], [10, 11, 1]]
    generation = Seq2SeqCollator(pad_token_id=0, for_generation=True)([{"source_ids": [5], "target_ids": [8]}])
    assert set(generation) == {"input_ids", "attention_mask"}


def test_a_decoder_predicts_each_label_at_its_own_position():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 4, 2], [7, 2, IGNORE_INDEX, IGNORE_INDEX]])
    assert answer_positions(labels).tolist() == [1, -1]  # causal: the position before
    assert answer_positions(labels, shift=0).tolist() == [2, 0]


def test_t5_trains_in_4bit_and_scores_mmlu(tmp_path, run_in_process):
    """(Predicting and merging T5: tests/test_architectures.py.)"""
    from qlorakit.cli import train
    from test_model import build_tiny

    model_dir = build_tiny("t5", tmp_path / "t5")
    output_dir = str(tmp_path / "run")
    result = run_in_process(train, [
        "--model_name_or_path", model_dir, "--output_dir", output_dir,
        "--dataset", os.path.join(SAMPLE_DATA_DIR, "alpaca_sample.json"), "--dataset_format", "alpaca",
        "--use_cpu", "--bf16", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
        "--source_max_len", "48", "--target_max_len", "16", "--lora_r", "4", "--max_steps", "2", "--save_steps", "2",
        "--do_eval", "--eval_strategy", "steps", "--eval_steps", "2", "--eval_dataset_size", "2",
        "--do_mmlu_eval", "--mmlu_data_dir", os.path.join(SAMPLE_DATA_DIR, "mmlu_sample"), "--mmlu_dataset", "mmlu-zs",
        "--max_mmlu_samples", "8", "--per_device_eval_batch_size", "4"], check=True)
    assert "4-bit linear layers: 28 of 33 (not quantized: wo x4, lm_head)" in result.stdout
    history = json.load(open(os.path.join(output_dir, "checkpoint-2", "trainer_state.json")))["log_history"]
    mmlu = [entry for entry in history if "mmlu_eval_accuracy" in entry]
    assert len(mmlu) == 1 and 0.0 <= mmlu[0]["mmlu_eval_accuracy"] <= 1.0 and mmlu[0]["mmlu_loss"] > 0
    config = json.load(open(os.path.join(output_dir, "checkpoint-2", "adapter_model", "adapter_config.json")))
    assert config["task_type"] == "SEQ_2_SEQ_LM"


def test_chat_data_on_an_encoder_decoder_is_one_line_and_exit_2(tmp_path, run_in_process):
    from qlorakit.cli import train
    from test_model import build_tiny

    model_dir = build_tiny("t5", tmp_path / "t5")
    result = run_in_process(train, ["--model_name_or_path", model_dir, "--output_dir", str(tmp_path / "run"),
                                    "--dataset", os.path.join(SAMPLE_DATA_DIR, "chat_sample.jsonl"), "--use_cpu"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: chat data trains causal models")
