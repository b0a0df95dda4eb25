"""Differential check: qlora.py's eval loss equals what plain transformers + peft code computes.

The oracle loads the same 4-bit NF4 base with a BitsAndBytesConfig, adds the pad row the recipe
adds (it takes part in the softmax), puts the run's saved adapter on it with PeftModel, builds
each held-out row by hand the way the QLoRA recipe defines it (bos + input, output + eos, loss on
the output only) and averages the cross entropy over every target token. Nothing of qlorakit is
used on the oracle's side, so a wrong mask, a lost eos, a row of the wrong split or an adapter
saved differently from the one evaluated shows up as a different number.
"""

import json
import os

import bitsandbytes as bnb
import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from conftest import run_python

HELD_OUT = 4


def oracle_eval_loss(model_dir, adapter_dir, rows):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization, dtype=torch.float32)
    for module in base.modules():  # fp32 as asked: no bf16 kernel on AVX512-BF16 CPUs (bitsandbytes' default)
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    if tokenizer.pad_token is None:  # the recipe adds a pad token whose rows start at the mean of the others
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        rows_before = base.get_input_embeddings().weight.shape[0]
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        for weight in (base.get_input_embeddings().weight.data, base.get_output_embeddings().weight.data):
            weight[rows_before:] = weight[:rows_before].mean(dim=0)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    total, count = 0.0, 0
    for row in rows:
        source = tokenizer(tokenizer.bos_token + row["input"], add_special_tokens=False)["input_ids"]
        target = tokenizer(row["output"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([source + target])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        labels = ids[0, 1:].clone()
        labels[: len(source) - 1] = -100
        total += torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
        count += len(target)
    return total / count


def test_eval_loss_equals_plain_transformers_and_peft(tiny_model_dir, tmp_path):
    """One eval batch holds every held-out row, so the Trainer's eval_loss is the token mean."""
    fruit = "apple pear plum fig lime kiwi date".split()
    rows = [{"input": f"Name item {i} of the {'long ' * (i % 3)}list.", "output": f"Item {i} is the {fruit[i % 7]}."}
            for i in range(12)]
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows))
    output_dir = tmp_path / "run"
    run_python(["qlora.py", "--model_name_or_path", tiny_model_dir, "--dataset", str(data), "--dataset_format",
                "input-output", "--output_dir", str(output_dir), "--max_steps", "3", "--learning_rate", "0.01",
                "--lora_r", "8", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "8",
                "--do_eval", "--eval_dataset_size", str(HELD_OUT), "--bf16", "False", "--save_steps", "3",
                "--report_to", "none"])
    reported = json.loads((output_dir / "eval_results.json").read_text())["eval_loss"]
    held_out = Dataset.from_list(rows).train_test_split(test_size=HELD_OUT, shuffle=True, seed=42)["test"]
    expected = oracle_eval_loss(tiny_model_dir, os.path.join(output_dir, "checkpoint-3", "adapter_model"),
                                list(held_out))
    assert reported == pytest.approx(expected, abs=1e-5)
