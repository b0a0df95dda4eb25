"""Bytes that autograd saves for one LLaMA decoder layer in QLoRA training: the source of the
activation coefficients in qlorakit/memory.py.

    python benchmarks/activation_bytes.py [--json]

Tiny LLaMA models (random weights, no download) are loaded the project's way (4-bit NF4 + double
quant, LoRA on all seven linears: qlorakit.training_model.load_base_model + attach_lora) and run forward
once on CPU, without gradient checkpointing: with --bf16 under bf16 autocast (as the Trainer runs
it), without it in fp32. A saved-tensor hook records every tensor saved for backward while the
middle decoder layer runs; each storage counts once, and storages that exist before the layer
(weights, the layer input, rotary cos/sin, the mask) are left out. The layer input, the tensor
gradient checkpointing keeps, is reported apart.

Sizes vary over hidden 64/128, intermediate 192/384 (multiples of 32: bitsandbytes' CPU kernels),
LoRA rank 8/16 and sequence 32/64, and the bytes are fitted, per setting, as
    batch*seq*(a*hidden + b*intermediate + c*lora_r + d) + s*batch*heads*seq^2
for --bf16 with norms_in_fp32 True/False and for fp32 (no --bf16), each with lora_dropout 0/0.1
and sdpa/eager. The fit is exact when the printed residual is 0. Heads are 32 wide here (LLaMA:
128); sdpa's fp32 log-sum-exp (4 bytes per head and token) lands in `a` as 4/32 = 0.125, for
LLaMA 4/128 = 0.03.
"""

import argparse
import contextlib
import itertools
import json
import os
import tempfile

import torch
from transformers.utils import logging

from qlorakit.cli.make_tiny_model import build_model
from qlorakit.config import parse_arguments
from qlorakit.training_model import attach_lora, load_base_model

HIDDEN, INTERMEDIATE, RANKS, SEQS = (64, 128), (192, 384), (8, 16), (32, 64)
BATCH, HEAD_DIM, NUM_LAYERS, MEASURED_LAYER = 2, 32, 3, 1
# (bf16, norms_in_fp32); without --bf16 the whole model, norms included, is fp32.
PRECISIONS = ((True, False), (True, True), (False, False))


def save_model(directory, hidden, intermediate, head_dim=HEAD_DIM):
    heads = hidden // head_dim
    build_model(256, hidden, NUM_LAYERS, seed=0, dtype=torch.bfloat16, intermediate_size=intermediate,
                num_attention_heads=heads, num_key_value_heads=heads).save_pretrained(directory)


def load(model_dir, norms_in_fp32, lora_dropout, attn, lora_r, bf16=True):
    arguments = parse_arguments([
        "--model_name_or_path", model_dir, "--output_dir", model_dir, "--bf16", str(bf16), "--use_cpu",
        "--gradient_checkpointing", "False", "--attn_implementation", attn, "--lora_r", str(lora_r),
        "--lora_dropout", str(lora_dropout), "--norms_in_fp32", str(norms_in_fp32)])
    model = attach_lora(load_base_model(arguments), arguments)
    return model.train()


def measure(model, seq, bf16=True):
    """(bytes saved inside the middle layer, its input tensor, whether the layer saves that input)."""
    layer = model.get_base_model().model.layers[MEASURED_LAYER]
    before = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    state = {"active": False, "saved": {}}

    def enter(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        inputs = [*(kwargs.get("position_embeddings") or ()), kwargs.get("attention_mask")]
        before.update(t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor))
        state.update(active=True, input=hidden)

    def pack(tensor):
        if state["active"]:
            storage = tensor.untyped_storage()
            state["saved"][storage.data_ptr()] = storage.nbytes()
        return tensor

    hooks = [layer.register_forward_pre_hook(enter, with_kwargs=True),
             layer.register_forward_hook(lambda *_: state.update(active=False))]
    ids = torch.randint(3, 256, (BATCH, seq))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(input_ids=ids, use_cache=False)
    for hook in hooks:
        hook.remove()
    input_ptr = state["input"].untyped_storage().data_ptr()
    saved = sum(n for ptr, n in state["saved"].items() if ptr not in before and ptr != input_ptr)
    return saved, state["input"], input_ptr in state["saved"]


def fit(rows):
    """Least-squares coefficients of bytes on (tokens*h, tokens*i, tokens*r, tokens, batch*heads*seq^2)."""
    x = torch.tensor([[t * h, t * i, t * r, t, s] for t, h, i, r, s, _ in rows], dtype=torch.float64)
    y = torch.tensor([b for *_, b in rows], dtype=torch.float64)
    coef = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    residual = (x @ coef - y).abs().max().item()
    return [round(c, 3) + 0.0 for c in coef.tolist()], residual  # + 0.0: no "-0"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.disable_progress_bar()
    settings = list(itertools.product(PRECISIONS, (0.0, 0.1), ("sdpa", "eager")))
    rows = {setting: [] for setting in settings}
    inputs = {}
    with tempfile.TemporaryDirectory() as workdir:
        for hidden, intermediate in itertools.product(HIDDEN, INTERMEDIATE):
            model_dir = os.path.join(workdir, f"h{hidden}-i{intermediate}")
            save_model(model_dir, hidden, intermediate)
            for setting, lora_r in itertools.product(settings, RANKS):
                (bf16, norms_in_fp32), dropout, attn = setting
                model = load(model_dir, norms_in_fp32, dropout, attn, lora_r, bf16)
                for seq in SEQS:
                    saved, layer_input, input_saved = measure(model, seq, bf16)
                    tokens, heads = BATCH * seq, hidden // HEAD_DIM
                    rows[setting].append((tokens, hidden, intermediate, lora_r, BATCH * heads * seq * seq, saved))
                    inputs[setting[0]] = (layer_input.dtype, layer_input.element_size(), input_saved)
    results = []
    for ((bf16, norms_in_fp32), dropout, attn), setting_rows in rows.items():
        (a, b, c, d, s), residual = fit(setting_rows)
        dtype, size, input_saved = inputs[bf16, norms_in_fp32]
        results.append({"bf16": bf16, "norms_in_fp32": norms_in_fp32, "lora_dropout": dropout, "attn": attn,
                        "per_hidden": a, "per_intermediate": b, "per_lora_r": c, "per_token": d, "per_score": s,
                        "max_residual_bytes": residual, "layer_input_dtype": str(dtype),
                        "layer_input_bytes_per_hidden": size, "layer_saves_its_input": input_saved})
    if args.json:
        print(json.dumps(results))
        return
    print("bytes saved per batch*seq element (and per attention score) for one decoder layer, layer input apart")
    for r in results:
        print(f"bf16={r['bf16']!s:5} norms_in_fp32={r['norms_in_fp32']!s:5} dropout={r['lora_dropout']} {r['attn']:5}: "
              f"{r['per_hidden']:g}*hidden + {r['per_intermediate']:g}*inter + {r['per_lora_r']:g}*lora_r"
              f" + {r['per_token']:g} + {r['per_score']:g}/score (fit residual {r['max_residual_bytes']:.0f} B)")
    for (bf16, norms_in_fp32), (dtype, size, saved) in inputs.items():
        print(f"bf16={bf16!s:5} norms_in_fp32={norms_in_fp32!s:5} checkpointed layer input: {dtype}, {size} bytes per hidden "
              f"per batch*seq element, {'also' if saved else 'not'} saved by the layer itself")


if __name__ == "__main__":
    main()
