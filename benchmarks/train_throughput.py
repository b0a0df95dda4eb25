"""Training throughput: our pipeline against a reference-style one, side by side in one process.

    python benchmarks/train_throughput.py --preset cpu-tiny [--steps 6] [--repeats 3] [--json]
    python benchmarks/train_throughput.py --preset gpu-7b --json      # needs a CUDA GPU (~20 GB)
    python benchmarks/train_throughput.py --ablate "--norms_in_fp32 True"   # ours against ours + flags

Both pipelines train the same model (4-bit NF4 + double quant, LoRA r 64 / alpha 16 on every
linear layer, paged AdamW, bf16) on the same data for the same number of optimizer steps at the
same effective batch (16), through the Hugging Face Trainer, each in a fresh process:

- ours: qlora.py's defaults: rows tokenized once up front, batched by token length, bf16 norms,
  micro-batch x accumulation from the preset (or --ours_batch), plus any --ours_flags;
- baseline, as the QLoRA reference runs: tokenized inside the collator at every step, each
  micro-batch padded to its longest row, group_by_length on character lengths, norms in fp32,
  batch 1 x accumulation 16 (its Guanaco scripts). With --ablate FLAGS the baseline is ours
  again, with FLAGS added: the share of one option, measured side by side.

Reported per pipeline: non-padding tokens per second (steps after the first, which pays one-time
costs), mean step time, peak memory (CUDA max allocated on GPU, the process's peak RSS on CPU) and the
final loss. --repeats N runs the pair N times, alternating, and reports the pair with the
median speedup (a shared box's speed drifts by ~10% between runs). Data: the bundled
OpenAssistant-format conversations, repeated, so lengths follow real conversations. gpu-7b
builds a LLaMA-7B-shaped model with random weights (no download) and quantizes it on load.
"""

import argparse
import gc
import json
import multiprocessing
import os
import shlex
import tempfile
import time
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import TrainerCallback

from qlorakit import SAMPLE_DATA_DIR
from qlorakit.cli import make_tiny_model
from qlorakit.collate import IGNORE_INDEX
from qlorakit.config import parse_arguments
from qlorakit.data import apply_format, load_local_dataset
from qlorakit.memory import peak_memory_mb
from qlorakit.train import setup_trainer

OASST_SAMPLE = os.path.join(SAMPLE_DATA_DIR, "oasst1_sample.jsonl")


@dataclass(frozen=True)
class Preset:
    ours_batch: int  # gradient accumulation makes up the rest of the effective batch of 16
    steps: int
    cpu: bool


PRESETS = {
    "cpu-tiny": Preset(ours_batch=16, steps=6, cpu=True),
    "gpu-7b": Preset(ours_batch=4, steps=12, cpu=False),
}


def build_llama_7b(directory):
    """LLaMA-7B shapes with random bf16 weights, saved once so the 4-bit load path is the real one."""
    with torch.device("cuda"):
        model = make_tiny_model.build_model(32000, 4096, 32, seed=0, dtype=torch.bfloat16, intermediate_size=11008,
                                            num_attention_heads=32, num_key_value_heads=32)
    model.save_pretrained(directory)
    del model
    torch.cuda.empty_cache()
    # The tokenizer is the tiny one's, with its ids remapped into the 32k vocabulary by size only:
    # throughput depends on token counts, not on which tokens they are.
    make_tiny_model.train_tokenizer(make_tiny_model.DEFAULT_CORPUS, 2048).save_pretrained(directory)


class ReferenceStyleCollator:
    """The QLoRA reference's collator, reduced to what matters for speed: it tokenizes every
    micro-batch again and pads to the longest row."""

    def __init__(self, tokenizer, source_max_len, target_max_len):
        self.tokenizer = tokenizer
        self.source_max_len = source_max_len
        self.target_max_len = target_max_len

    def __call__(self, rows):
        sources = [f"{self.tokenizer.bos_token}{row['input']}" for row in rows]
        targets = [f"{row['output']}{self.tokenizer.eos_token}" for row in rows]
        tokenized_sources = self.tokenizer(sources, max_length=self.source_max_len, truncation=True,
                                           add_special_tokens=False)["input_ids"]
        tokenized_targets = self.tokenizer(targets, max_length=self.target_max_len, truncation=True,
                                           add_special_tokens=False)["input_ids"]
        input_ids, labels = [], []
        for source, target in zip(tokenized_sources, tokenized_targets):
            input_ids.append(torch.tensor(source + target))
            labels.append(torch.tensor([IGNORE_INDEX] * len(source) + target))
        input_ids = pad_sequence(input_ids, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        labels = pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
        return {"input_ids": input_ids, "labels": labels,
                "attention_mask": input_ids.ne(self.tokenizer.pad_token_id)}


class StepMeter(TrainerCallback):
    """Per optimizer step: wall time and the real (non-padding) tokens the model consumed."""

    def __init__(self, cuda):
        self.cuda = cuda
        self.tokens = 0
        self.steps = []

    def count_tokens(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else kwargs["input_ids"].numel()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self.sync()
        self.started, self.tokens = time.perf_counter(), 0

    def on_step_end(self, args, state, control, **kwargs):
        self.sync()
        self.steps.append((time.perf_counter() - self.started, self.tokens))


def train_metered(trainer, cuda):
    """Train; (non-padding tokens/s and mean step time over the steps after the first, losses)."""
    meter = StepMeter(cuda=cuda)
    trainer.add_callback(meter)
    trainer.model.register_forward_pre_hook(meter.count_tokens, with_kwargs=True)
    trainer.train()
    timed = meter.steps[1:]
    seconds, tokens = sum(t for t, _ in timed), sum(n for _, n in timed)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return tokens / seconds, seconds / len(timed), losses


BASELINE_FLAGS = ["--norms_in_fp32", "True"]  # the reference upcast norms to fp32


def training_flags(model_dir, output_dir, data_path, batch, accumulation, steps, preset, extra_flags):
    flags = ["--model_name_or_path", model_dir, "--output_dir", output_dir, "--dataset", data_path,
             "--dataset_format", "oasst1", "--bf16", "--source_max_len", "16", "--target_max_len", "512",
             "--lora_r", "64", "--lora_alpha", "16", "--per_device_train_batch_size", str(batch),
             "--gradient_accumulation_steps", str(accumulation), "--max_steps", str(steps),
             "--save_strategy", "no", "--logging_steps", "1", "--seed", "0", "--disable_tqdm", "True",
             "--dataloader_num_workers", "0"]
    return flags + (["--use_cpu"] if preset.cpu else []) + extra_flags


def make_baseline(trainer, tokenizer, data_args):
    """Turn our trainer into the reference-style pipeline: raw text rows, collator tokenizes."""
    raw = apply_format(load_local_dataset(data_args.dataset), "oasst1", data_args.dataset)["train"]
    raw = raw.map(lambda row: {"length": len(row["input"]) + len(row["output"])})
    trainer.train_dataset = raw
    trainer.data_collator = ReferenceStyleCollator(tokenizer, data_args.source_max_len, data_args.target_max_len)


def run_pipeline(name, model_dir, data_path, preset, steps, workdir, batch, accumulation, extra_flags,
                 reference_style):
    flags = training_flags(model_dir, os.path.join(workdir, name), data_path, batch, accumulation, steps,
                           preset, extra_flags)
    arguments = parse_arguments(flags)
    trainer, tokenizer, _ = setup_trainer(arguments)
    if reference_style:
        make_baseline(trainer, tokenizer, arguments.data)
    tokens_per_s, step_time_s, losses = train_metered(trainer, cuda=not preset.cpu)
    result = {"tokens_per_s": round(tokens_per_s, 1), "step_time_s": round(step_time_s, 3),
              "peak_mem_mb": peak_memory_mb(trainer.args.device), "final_loss": round(losses[-1], 4),
              "micro_batch": batch, "accumulation": accumulation, "steps": steps}
    del trainer
    gc.collect()
    if not preset.cpu:
        torch.cuda.empty_cache()
    return result


def run_isolated(pipeline, *args):
    """pipeline(*args) in a fresh process, so that no pipeline inherits another's memory or caches."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(pipeline, args)


def repeated_data(path, copies, directory):
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    target = os.path.join(directory, "oasst1_repeated.jsonl")
    with open(target, "w", encoding="utf-8") as handle:
        handle.writelines(lines * copies)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny")
    parser.add_argument("--steps", type=int, help="optimizer steps per pipeline (preset default)")
    parser.add_argument("--ours_batch", type=int, help="our micro-batch (preset default); accumulation = 16 / it")
    parser.add_argument("--ours_flags", default="", help='extra qlora.py flags for ours, e.g. "--padding_free True"')
    parser.add_argument("--ablate", help="baseline = ours plus these qlora.py flags, instead of the reference's way")
    parser.add_argument("--repeats", type=int, default=1, help="run the pair N times; report the median speedup")
    parser.add_argument("--model_dir", help="keep the built model here and reuse it when present (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if not preset.cpu and not torch.cuda.is_available():
        parser.error(f"--preset {args.preset} needs a CUDA GPU")
    steps = args.steps or preset.steps
    if steps < 2:
        parser.error("--steps must be at least 2: the first step warms up and is not timed")
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = args.model_dir or os.path.join(workdir, "model")
        if not os.path.exists(os.path.join(model_dir, "config.json")):
            (make_tiny_model.make_tiny_model if preset.cpu else build_llama_7b)(model_dir)
        data_path = repeated_data(OASST_SAMPLE, copies=4, directory=workdir)
        ours_batch = args.ours_batch or preset.ours_batch
        ours_flags = shlex.split(args.ours_flags)
        layouts = {"baseline": (1, 16, BASELINE_FLAGS, True),  # (batch, accumulation, flags, reference_style)
                   "ours": (ours_batch, 16 // ours_batch, ours_flags, False)}
        if args.ablate is not None:
            layouts["baseline"] = (ours_batch, 16 // ours_batch, ours_flags + shlex.split(args.ablate), False)
        pairs = [{name: run_isolated(run_pipeline, name, model_dir, data_path, preset, steps, workdir, *layout)
                  for name, layout in layouts.items()} for _ in range(args.repeats)]
    speedups = [round(pair["ours"]["tokens_per_s"] / pair["baseline"]["tokens_per_s"], 2) for pair in pairs]
    median = sorted(range(len(pairs)), key=speedups.__getitem__)[len(pairs) // 2]
    results = pairs[median]
    report = {"preset": args.preset, "ours_flags": args.ours_flags, "ablate": args.ablate, "ours": results["ours"],
              "baseline": results["baseline"], "speedup": speedups[median], "speedups": speedups}
    if args.json:
        print(json.dumps(report))
        return
    print(f"preset {args.preset}: {steps} steps, effective batch 16")
    for name in ("baseline", "ours"):
        r = results[name]
        print(f"  {name:8s} {r['micro_batch']:>2d} x {r['accumulation']:<2d}  {r['tokens_per_s']:>9.1f} tokens/s  "
              f"{r['step_time_s']:.3f} s/step  peak {r['peak_mem_mb']} MB  final loss {r['final_loss']}")
    print(f"  speedup {report['speedup']}x" + (f" (median of {speedups})" if len(pairs) > 1 else ""))


if __name__ == "__main__":
    main()
