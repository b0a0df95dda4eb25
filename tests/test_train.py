"""qlorakit.train: what setup_trainer guarantees before training starts."""

import os

import torch

from qlorakit import SAMPLE_DATA_DIR
from qlorakit.config import parse_arguments
from qlorakit.collate import Seq2SeqCollator
from qlorakit.memory import peak_memory_mb
from qlorakit.train import build_collator, setup_trainer


def lora_a_weights(tiny_model_dir, output_dir, seed):
    arguments = parse_arguments([
        "--model_name_or_path", tiny_model_dir, "--output_dir", str(output_dir), "--use_cpu",
        "--dataset", os.path.join(SAMPLE_DATA_DIR, "alpaca_sample.json"), "--dataset_format", "alpaca",
        "--lora_r", "8", "--max_steps", "1", "--seed", str(seed)])
    trainer, _, _ = setup_trainer(arguments)
    return {name: param.detach().clone() for name, param in trainer.model.named_parameters() if "lora_A" in name}


def test_the_seed_fixes_the_lora_initialisation(tiny_model_dir, tmp_path):
    first, again, other = (lora_a_weights(tiny_model_dir, tmp_path / str(i), seed) for i, seed in enumerate((0, 0, 1)))
    assert first and all(torch.equal(first[name], again[name]) for name in first)
    assert not any(torch.equal(first[name], other[name]) for name in first)


def test_the_collator_is_built_from_the_values_it_uses():
    collator = build_collator(7, seq2seq=False, train_on_source=True, padding_free=True)
    assert (collator.pad_token_id, collator.train_on_source, collator.padding_free) == (7, True, True)
    assert isinstance(build_collator(7, seq2seq=True), Seq2SeqCollator)


def test_peak_memory_is_read_for_a_device():
    assert peak_memory_mb(torch.device("cpu")) > 0  # the process's peak resident set on CPU
