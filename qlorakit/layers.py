"""The layers of a model found by type: the base's linear layers (which are quantized, which
LoRA may target), its norms, and the report of what trains and how the weights are stored.
Found by type rather than by name, so that every architecture is handled alike.
"""

import bitsandbytes as bnb
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers.pytorch_utils import Conv1D

QUANTIZED_LINEAR_TYPES = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
# GPT-2 and its relatives use Conv1D, a linear layer with a transposed weight.
LINEAR_TYPES = (torch.nn.Linear, Conv1D, *QUANTIZED_LINEAR_TYPES)
NORM_TYPES = (torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.GroupNorm)
# The linear layers of nn.MultiheadAttention are read as raw weights, never called: keep them.
UNCALLED_LINEAR_TYPES = (torch.nn.modules.linear.NonDynamicallyQuantizableLinear,)


def adapter_sublayers(model):
    """ids of the modules that belong to adapters (LoRA's A and B), not to the base."""
    ids = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attribute in module.adapter_layer_names:
                ids.update(id(sub) for sub in getattr(module, attribute).modules())
    return ids


def base_linear_layers(model):
    """(full name, module) of every linear layer of the base model, found by type."""
    adapters = adapter_sublayers(model)
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, LINEAR_TYPES) and id(module) not in adapters]


# The parts of a name that peft's wrappers insert between a layer and its own module.
PEFT_WRAPPER_PARTS = ("base_layer", "original_module", "token_adapter")


def short_name(full_name):
    """The layer's own name: 'q_proj' for 'model.layers.0.self_attn.q_proj(.base_layer)', 'lm_head'
    for 'lm_head.token_adapter.base_layer' (a head whose new token rows train)."""
    return next(part for part in reversed(full_name.split(".")) if part not in PEFT_WRAPPER_PARTS)


def count_linear_layers(model):
    """(quantized, total, short names of the unquantized ones) over the base's linear layers."""
    layers = base_linear_layers(model)
    kept = [short_name(name) for name, module in layers if not isinstance(module, QUANTIZED_LINEAR_TYPES)]
    return len(layers) - len(kept), len(layers), kept


def describe_linear_layers(model):
    """One report line: how many linear layers are quantized, and which stay 16/32-bit."""
    quantized, total, kept = count_linear_layers(model)
    if not quantized:
        return f"linear layers: {total}, none quantized"
    kinds = {4 if isinstance(m, bnb.nn.Linear4bit) else 8 for _, m in base_linear_layers(model)
             if isinstance(m, QUANTIZED_LINEAR_TYPES)}
    bits = "/".join(f"{k}-bit" for k in sorted(kinds))
    counts = {name: kept.count(name) for name in dict.fromkeys(kept)}
    unquantized = ", ".join(name if n == 1 else f"{name} x{n}" for name, n in counts.items())
    return f"{bits} linear layers: {quantized} of {total}" + (f" (not quantized: {unquantized})" if kept else "")


def find_linear_module_names(model):
    """Short names of every linear layer of the base, found by type, except the output head."""
    output_head = model.get_output_embeddings()
    return sorted({short_name(name) for name, module in base_linear_layers(model) if module is not output_head})


def keep_4bit_weights_unpacked(model):
    """Keep every 4-bit layer's weight in bitsandbytes' standard layout, on every CPU.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight for a bf16 kernel the first time
    the layer runs in eval mode without gradients, and keeps it repacked. That kernel has no
    backward pass: after an evaluation during training, every later step silently lost the
    gradient through the frozen base (the first layers' LoRA gradients became zero). It also
    computes in bf16 whatever the compute dtype, so a loaded adapter's logits differed from the
    ones it was trained with, and depended on the CPU.
    """
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def is_norm_layer(module):
    """LayerNorm, RMSNorm and the architectures' own norm classes (LlamaRMSNorm, T5LayerNorm, ...)."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


def logical_numel(param):
    """Parameters a tensor stands for: a 4-bit tensor packs two weights in each byte."""
    if isinstance(param, bnb.nn.Params4bit):
        return param.numel() * 2
    return param.numel()


def describe_parameters(model):
    """Lines that say what trains and how the weights are stored (dtype -> share of elements)."""
    trainable = sum(logical_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(logical_numel(p) for p in model.parameters())
    lines = [f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}",
             describe_linear_layers(model)]
    by_dtype = {}
    for param in model.parameters():
        by_dtype[param.dtype] = by_dtype.get(param.dtype, 0) + param.numel()
    stored = sum(by_dtype.values())
    for dtype, count in sorted(by_dtype.items(), key=lambda item: -item[1]):
        lines.append(f"{dtype}: {count:,} stored elements ({100 * count / stored:.1f}%)")
    return lines
