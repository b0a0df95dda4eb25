"""Memory of preparing a 4-bit model for LoRA training: peft's k-bit preparation against ours.

    python benchmarks/prepare_memory.py [--hidden_size 1024] [--num_layers 8] [--vocab_size 32000] [--json]

peft's prepare_model_for_kbit_training upcasts every non-quantized weight (embeddings, head,
norms) to fp32; with --bf16 qlorakit then casts embeddings and head back to bf16, so the copy is
pure waste. qlorakit.training_model.prepare_base_for_training only freezes and sets up checkpointing.
Each method runs in a fresh process on the same saved model (random weights, LLaMA shapes, large
vocabulary so the embeddings matter, as in a real LLaMA); reported: peak and final resident
memory (RSS) of the preparation, above the RSS of the loaded 4-bit model. CPU only.
"""

import argparse
import json
import multiprocessing
import os
import tempfile
import threading
import time

import psutil
import torch

from qlorakit.cli.make_tiny_model import build_model

MB = 2**20


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.process, self.peak, self.running = psutil.Process(), 0, True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def save_random_llama(directory, hidden_size, num_layers, vocab_size):
    build_model(vocab_size, hidden_size, num_layers, seed=0, dtype=torch.bfloat16,
                intermediate_size=hidden_size * 11 // 4 // 64 * 64,
                num_key_value_heads=hidden_size // 64).save_pretrained(directory)


def prepare(method, model_dir):
    from peft import prepare_model_for_kbit_training

    from qlorakit.config import parse_arguments
    from qlorakit.training_model import attach_lora, load_base_model

    arguments = parse_arguments(["--model_name_or_path", model_dir, "--output_dir", os.path.dirname(model_dir),
                                 "--bf16", "--use_cpu", "--lora_r", "64", "--lora_alpha", "16"])
    model = load_base_model(arguments)
    process = psutil.Process()
    loaded = process.memory_info().rss
    with PeakRSS() as rss:
        if method == "peft":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        model = attach_lora(model, arguments)
    final = process.memory_info().rss
    return {"loaded_mb": round(loaded / MB), "peak_above_loaded_mb": round((rss.peak - loaded) / MB),
            "final_above_loaded_mb": round((final - loaded) / MB)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden_size", type=int, default=1024)
    parser.add_argument("--num_layers", type=int, default=8)
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = os.path.join(workdir, "model")
        save_random_llama(model_dir, args.hidden_size, args.num_layers, args.vocab_size)
        context = multiprocessing.get_context("spawn")
        results = {}
        for method in ("peft", "ours"):
            with context.Pool(1) as pool:
                results[method] = pool.apply(prepare, (method, model_dir))
    if args.json:
        print(json.dumps(results))
        return
    for method, result in results.items():
        print(f"{method:5s} loaded {result['loaded_mb']} MB, preparation peak +{result['peak_above_loaded_mb']} MB, "
              f"after +{result['final_above_loaded_mb']} MB")


if __name__ == "__main__":
    main()
