"""Chat data, our pipeline against TRL's SFTTrainer with assistant-only loss, side by side.

    pip install trl==1.16.0 --no-deps      # benchmark only; qlora.py never imports trl
    python benchmarks/chat_peer.py [--steps 6] [--repeats 3] [--json]

All pipelines train the same model object, built by qlorakit.training_model.load_model (the tiny local
LLaMA in 4-bit NF4 + double quant, LoRA r 64 / alpha 16 on every linear layer, bf16, gradient
checkpointing, paged AdamW) on the bundled multi-turn conversations (qlorakit/sample_data/
chat_sample.jsonl, repeated), with the loss on the assistant turns only, micro-batch 16, for the
same number of steps, each in a fresh process:

- ours: qlora.py's chat format (rows rendered and tokenized once, masks from the rendered text,
  batches grouped by token length);
- trl-grouped: SFTTrainer, assistant_only_loss, the same length grouping;
- trl-default: SFTTrainer, assistant_only_loss, its default random sampler.

TRL's assistant-only loss needs a chat template with ``{% generation %}`` markers (it takes the
mask from them); the tiny tokenizer's template has none and TRL ships patched templates only for
known model families, so TRL gets the Guanaco template of qlorakit.chat_data with the markers
around each reply and its eos. Both then train on identical tokens and labels
(tests/test_chat_peer.py checks this). The pipelines run in turn, --repeats times, and the
report holds each one's median tokens/s (non-padding tokens of the steps after the first), peak
RSS and final loss.
"""

import argparse
import json
import os
import statistics
import tempfile

from qlorakit import SAMPLE_DATA_DIR
from qlorakit.chat_data import GUANACO_TEMPLATE
from qlorakit.cli.make_tiny_model import make_tiny_model
from qlorakit.config import parse_arguments
from qlorakit.memory import peak_memory_mb
from qlorakit.train import setup_trainer
from train_throughput import repeated_data, run_isolated, train_metered  # a sibling: benchmarks/ runs as scripts

CHAT_SAMPLE = os.path.join(SAMPLE_DATA_DIR, "chat_sample.jsonl")
MAX_LEN = 1024  # longer than every bundled conversation: nobody truncates
PIPELINES = ("ours", "trl-grouped", "trl-default")

# The Guanaco template with TRL's generation markers: the same text, the same trained characters.
GUANACO_TEMPLATE_WITH_MARKERS = "{{ bos_token }}" + GUANACO_TEMPLATE.replace(
    "### Assistant: {{ message['content'] }}{{ eos_token }}",
    "### Assistant:{% generation %} {{ message['content'] }}{{ eos_token }}{% endgeneration %}")


def training_flags(model_dir, output_dir, data_path, batch, steps):
    return ["--model_name_or_path", model_dir, "--output_dir", output_dir, "--dataset", data_path,
            "--dataset_format", "chat", "--chat_template", "guanaco", "--max_seq_len", str(MAX_LEN),
            "--use_cpu", "--bf16", "--lora_r", "64", "--lora_alpha", "16",
            "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", "1",
            "--max_steps", str(steps), "--save_strategy", "no", "--logging_steps", "1", "--seed", "0",
            "--disable_tqdm", "True", "--dataloader_num_workers", "0"]


def build_trl_trainer(ours, tokenizer, data_path, grouped):
    """An SFTTrainer on our trainer's model and arguments, with TRL's own data pipeline."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    args = ours.args
    config = SFTConfig(
        output_dir=args.output_dir, use_cpu=True, bf16=True, per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=1, max_steps=args.max_steps, learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler_type, warmup_steps=args.warmup_steps, optim=args.optim,
        max_grad_norm=args.max_grad_norm, weight_decay=args.weight_decay, seed=args.seed, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        assistant_only_loss=True, max_length=MAX_LEN,
        train_sampling_strategy="group_by_length" if grouped else "random",
    )
    tokenizer.chat_template = GUANACO_TEMPLATE_WITH_MARKERS
    rows = load_dataset("json", data_files={"train": data_path})["train"]
    trainer = SFTTrainer(model=ours.model, args=config, train_dataset=rows, processing_class=tokenizer)
    if grouped:  # TRL names no length column; the Trainer's grouping reads 'length'
        trainer.train_dataset = trainer.train_dataset.map(lambda row: {"length": len(row["input_ids"])})
    return trainer


def run_pipeline(name, model_dir, data_path, workdir, batch, steps):
    arguments = parse_arguments(training_flags(model_dir, os.path.join(workdir, name), data_path, batch, steps))
    trainer, tokenizer, _ = setup_trainer(arguments)
    if name != "ours":
        trainer = build_trl_trainer(trainer, tokenizer, data_path, grouped=name == "trl-grouped")
    tokens_per_s, _, losses = train_metered(trainer, cuda=False)
    return {"tokens_per_s": round(tokens_per_s, 1), "peak_mem_mb": peak_memory_mb(trainer.args.device),
            "final_loss": round(losses[-1], 4), "first_loss": round(losses[0], 4)}


def summarize(runs):
    """Per pipeline: median tokens/s and peak memory over its runs, losses of the first run, and the
    median of ours / its tokens/s within each round (a shared CPU's speed drifts between rounds)."""
    return {name: {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
                   "peak_mem_mb": statistics.median(r["peak_mem_mb"] for r in results),
                   "final_loss": results[0]["final_loss"], "first_loss": results[0]["first_loss"],
                   "tokens_per_s_runs": [r["tokens_per_s"] for r in results],
                   "ours_speedup": statistics.median(round(o["tokens_per_s"] / r["tokens_per_s"], 2)
                                                     for o, r in zip(runs["ours"], results))}
            for name, results in runs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16, help="micro-batch of every pipeline (no accumulation)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each pipeline, in turn")
    parser.add_argument("--copies", type=int, default=8, help="how many times the chat sample is repeated")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    try:
        import trl
    except ImportError:
        parser.error("needs TRL: pip install trl==1.16.0 --no-deps (a benchmark-only extra)")
    runs = {name: [] for name in PIPELINES}
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = os.path.join(workdir, "model")
        make_tiny_model(model_dir)
        data_path = repeated_data(CHAT_SAMPLE, args.copies, workdir)
        for _ in range(args.repeats):
            for name in PIPELINES:
                runs[name].append(run_isolated(run_pipeline, name, model_dir, data_path, workdir, args.batch, args.steps))
    report = {"trl": trl.__version__, "steps": args.steps, "batch": args.batch, "repeats": args.repeats,
              **summarize(runs)}
    if args.json:
        print(json.dumps(report))
        return
    print(f"chat data, {args.steps} steps of {args.batch} conversations, medians of {args.repeats} runs each")
    for name in PIPELINES:
        r = report[name]
        print(f"  {name:12s} {r['tokens_per_s']:>8.1f} tokens/s  peak {r['peak_mem_mb']} MB  "
              f"loss {r['first_loss']} -> {r['final_loss']}  ours / it {r['ours_speedup']}x  "
              f"(runs: {r['tokens_per_s_runs']})")


if __name__ == "__main__":
    main()
