"""Train, predict and merge a tiny random model of every supported architecture; write the table.

    python scripts/architecture_matrix.py [--output docs/ARCHITECTURES.md] [--arch llama --arch t5 ...]

For each architecture of scripts/make_tiny_model.py (2 layers, 64 wide, local tokenizer), it runs
qlora.py in 4-bit NF4 for 2 steps with LoRA on all linear layers and --do_predict, checks that the
adapter targets every linear layer but the head (found by type), merges the adapter into the
dequantized base (scripts/merge_adapter.py --dequantize) and compares the merged model's logits with
the quantized base + adapter, training on the package's alpaca_sample.json. The test suite runs the
same check for each architecture; this script prints the table and, with --output, writes the
Markdown document (docs/ARCHITECTURES.md in the repository). CPU only, offline, about a minute.
"""

import argparse
import json
import os
import tempfile

from qlorakit import SAMPLE_DATA_DIR
from qlorakit.cli import make_tiny_model, merge_adapter, train
from qlorakit.errors import run_main

ALPACA = os.path.join(SAMPLE_DATA_DIR, "alpaca_sample.json")
PROBE_TEXTS = ["### Human: What is rain?### Assistant:", "Name a colour."]
MERGE_TOLERANCE = 1e-3


def training_flags(model_dir, output_dir):
    return ["--model_name_or_path", model_dir, "--output_dir", output_dir, "--dataset", ALPACA,
            "--dataset_format", "alpaca", "--use_cpu", "--bf16", "--bits", "4", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--source_max_len", "32", "--target_max_len", "32",
            "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "0.01", "--max_steps", "2", "--save_steps", "2", "--logging_steps", "1",
            "--do_predict", "--eval_dataset_size", "2", "--per_device_eval_batch_size", "2", "--max_new_tokens", "4",
            "--seed", "0"]


def use_training_kernels(model):
    """Put the 4-bit layers in training mode (the rest stays in eval mode, no dropout). On CPUs with
    AVX512-BF16, bitsandbytes repacks 4-bit weights for a bf16 kernel in eval-mode no-grad forwards
    (~0.015 of rounding on logits); training mode keeps the kernel the adapter was trained with."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.train()
    return model


def probe_logits(model, tokenizer):
    """Logits for PROBE_TEXTS; an encoder-decoder reads them and scores its first three tokens."""
    import torch

    batch = tokenizer(PROBE_TEXTS, return_tensors="pt", padding=True)
    if model.config.is_encoder_decoder:
        start = model.config.decoder_start_token_id
        batch["decoder_input_ids"] = torch.tensor([[start, 5, 6]] * len(PROBE_TEXTS))
    with torch.no_grad():
        return model(**batch).logits.float()


def merge_gaps(model_dir, adapter_dir, merged_dir):
    """(max |logit| difference between the merged model and the quantized base + adapter, and between
    the quantized base with and without the adapter: the first must be small next to the second)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from qlorakit.inference_model import load_for_inference

    merge_adapter.merge_adapter(model_dir, adapter_dir, merged_dir, dtype="float32", dequantize=True)
    model, tokenizer = load_for_inference(model_dir, adapter=adapter_dir, compute_dtype=torch.float32)
    expected = probe_logits(use_training_kernels(model), tokenizer)
    with model.disable_adapter():
        adapter_effect = (probe_logits(model, tokenizer) - expected).abs().max().item()
    auto_class = AutoModelForSeq2SeqLM if model.config.is_encoder_decoder else AutoModelForCausalLM
    merged = auto_class.from_pretrained(merged_dir, dtype=torch.float32).eval()
    merged_tokenizer = AutoTokenizer.from_pretrained(merged_dir, padding_side="left")
    return (probe_logits(merged, merged_tokenizer) - expected).abs().max().item(), adapter_effect


def adapter_targets_all_linear_layers(model_dir, adapter_dir):
    """Whether the saved LoRA targets are exactly the short names of the base's linear layers but the head."""
    from qlorakit.base_loading import BaseLoading
    from qlorakit.inference_model import load_base_for_inference
    from qlorakit.layers import find_linear_module_names

    base, _ = load_base_for_inference(model_dir, BaseLoading(bits=16, compute_dtype="float32"))
    with open(os.path.join(adapter_dir, "adapter_config.json"), encoding="utf-8") as handle:
        targets = sorted(json.load(handle)["target_modules"])
    return targets == find_linear_module_names(base), targets


def quantized_layer_count(model_dir, adapter_dir):
    """'quantized of total' linear layers of the base as the run loaded it (its base_loading.json)."""
    from qlorakit.inference_model import inference_loading, load_base_for_inference
    from qlorakit.layers import count_linear_layers

    loading, _ = inference_loading(adapter_dir)
    quantized, total, _ = count_linear_layers(load_base_for_inference(model_dir, loading)[0])
    return quantized, total


def check_architecture(arch, work_dir):
    """Build, train (4-bit, 2 steps), predict and merge one architecture; returns its table row."""
    model_dir, output_dir = os.path.join(work_dir, "model"), os.path.join(work_dir, "run")
    model = make_tiny_model.make_tiny_model(model_dir, arch, hidden_size=64, num_layers=2, vocab_size=1024)
    row = {"arch": arch, "model_class": type(model).__name__}
    row["train_exit_code"] = train.main(training_flags(model_dir, output_dir))
    adapter_dir = os.path.join(output_dir, "checkpoint-2", "adapter_model")
    with open(os.path.join(output_dir, "predictions.jsonl"), encoding="utf-8") as handle:
        row["predictions"] = sum(1 for line in handle if json.loads(line)["prediction_with_input"])
    row["all_linear_targets"], row["targets"] = adapter_targets_all_linear_layers(model_dir, adapter_dir)
    row["quantized"], row["linear_layers"] = quantized_layer_count(model_dir, adapter_dir)
    row["merge_gap"], row["adapter_effect"] = merge_gaps(model_dir, adapter_dir, os.path.join(work_dir, "merged"))
    return row


def format_table(rows):
    lines = ["| architecture | model class | train (4-bit) | predict | merge: max logit gap (adapter's own effect) "
             "| 4-bit linear layers | LoRA targets |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        trained = "yes" if row["train_exit_code"] == 0 else f"exit {row['train_exit_code']}"
        merged = f"{row['merge_gap']:.1e}" + ("" if row["merge_gap"] < MERGE_TOLERANCE else " (too large)") + \
            f" ({row['adapter_effect']:.2f})"
        targets = ", ".join(row["targets"]) + ("" if row["all_linear_targets"] else " (not all linear layers)")
        lines.append(f"| {row['arch']} | {row['model_class']} | {trained} | {row['predictions']} rows | {merged} | "
                     f"{row['quantized']} of {row['linear_layers']} | {targets} |")
    return "\n".join(lines)


def write_document(rows, path):
    body = format_table(rows)
    text = f"""# Architectures

Generated by `python scripts/architecture_matrix.py --output docs/ARCHITECTURES.md`;
do not edit by hand. Each row is a tiny
random model of that architecture (`scripts/make_tiny_model.py --arch NAME`, 2 layers, 64 wide,
tokenizer trained locally) trained by `qlora.py` for 2 steps in 4-bit NF4 with double quantization,
LoRA on all linear layers, then `--do_predict` (rows with a generated answer), then merged into
the dequantized base by `scripts/merge_adapter.py --dequantize` and compared with the 4-bit base +
adapter on two prompts (fp32 compute); in brackets, how far the adapter itself moves the logits
(trained at learning rate 0.01 so that it matters). The 4-bit column counts the base's linear layers (the
output head included) that load as bitsandbytes 4-bit layers; the rest stay 16-bit: the head,
and T5's `wo` projections, which transformers keeps in fp32 for T5's numerical stability. LoRA
targets are the short names of every linear layer but the head, found by type (GPT-2's Conv1D
included). The test suite (`tests/test_architectures.py`) runs the same check.

{body}
"""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="also write the table as a Markdown document (docs/ARCHITECTURES.md in a checkout)")
    parser.add_argument("--arch", action="append", choices=sorted(make_tiny_model.ARCHITECTURES),
                        help="only this architecture (repeatable); default: all")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work_dir:
        for arch in args.arch or list(make_tiny_model.ARCHITECTURES):
            rows.append(check_architecture(arch, os.path.join(work_dir, arch)))
    if args.output:
        write_document(rows, args.output)
    print(format_table(rows))
    return 0


def console_main():
    """The ``qlora-architecture-matrix`` command."""
    return run_main(main)
