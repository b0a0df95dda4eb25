"""Peak GPU memory of QLoRA training, component by component, so a run can be sized before a GPU
is rented.

Each component is a small pure function of a model shape and training settings that returns bytes;
the estimate is their sum. Keyword defaults are the Guanaco-7B recipe. What each component counts,
where its coefficients come from and how the totals compare with the QLoRA paper: docs/MEMORY.md.
MB is 2**20 bytes and GB 2**30, as torch and nvidia-smi count. peak_memory_mb measures what the
estimate predicts, for the training log and the benchmarks.
"""

import resource
from dataclasses import dataclass

import torch

from .base_loading import setting_choices

MB = 2**20
GB = 2**30
BF16, FP32 = 2, 4
NF4_BLOCK = 64
DQ_BLOCK = 256
ADAM8_BLOCK = 256
DEFAULT_OVERHEAD_MB = 768
OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit", "adamw_torch")
PAGED_OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit")
BITS = setting_choices("bits")  # the --bits choices, as the base-loading record defines them

SAVED_PER_TOKEN = 8  # the two norms' fp32 1/rms
SDPA_BYTES_PER_HEAD = 4  # sdpa's fp32 log-sum-exp per head and token (flash attention: assumed alike)


@dataclass(frozen=True)
class ActivationProfile:
    """What autograd saves for one decoder layer at one precision, in bytes per batch*seq element
    per unit of width (measured by benchmarks/activation_bytes.py, LoRA on all seven linears)."""

    residual: int  # the residual stream: the checkpointed layer input and the MLP activations
    saves_input: bool  # the layer saves its own input (an fp32 stream: the norm's upcast is a no-op)
    hidden: int
    intermediate: int
    lora_r: int  # each adapter's A output, kept for B
    dropout_hidden: int  # the extra with LoRA dropout under eager attention
    dropout_intermediate: int
    sdpa_dropout_hidden: int  # sdpa saves its output, the o_proj input: dropout cannot free it
    eager_per_score: int  # eager attention's saved softmax, per batch*heads*seq*seq


# --bf16 with bf16 norms, --bf16 --norms_in_fp32, and no --bf16 (everything in fp32).
ACTIVATION_PROFILES = {
    "bf16": ActivationProfile(BF16, False, hidden=20, intermediate=8, lora_r=14, dropout_hidden=18,
                              dropout_intermediate=2, sdpa_dropout_hidden=2, eager_per_score=6),
    "bf16_fp32_norms": ActivationProfile(FP32, True, hidden=22, intermediate=14, lora_r=14, dropout_hidden=12,
                                         dropout_intermediate=2, sdpa_dropout_hidden=2, eager_per_score=6),
    "fp32": ActivationProfile(FP32, True, hidden=28, intermediate=16, lora_r=28, dropout_hidden=36,
                              dropout_intermediate=4, sdpa_dropout_hidden=4, eager_per_score=4),
}


def activation_profile(norms_in_fp32=False, bf16=True):
    """The profile of a run: without --bf16 everything is fp32, norms included."""
    if not bf16:
        return ACTIVATION_PROFILES["fp32"]
    return ACTIVATION_PROFILES["bf16_fp32_norms" if norms_in_fp32 else "bf16"]


@dataclass(frozen=True)
class LinearLayer:
    """One linear layer of the model (every instance has its own entry), as training finds it."""

    name: str  # its short name, as --lora_modules names it: q_proj, c_attn, query_key_value, ...
    in_features: int
    out_features: int
    quantized: bool  # a 4/8-bit load quantizes it: not the head, nor what transformers keeps (T5's wo)
    head: bool = False  # the output head: counted with the embeddings, adapted only when named

    @property
    def weights(self):
        return self.in_features * self.out_features


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model, read from a weightless skeleton (qlorakit.model_skeleton)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False
    linear_layers: tuple[LinearLayer, ...] = ()
    all_lora_targets: tuple[str, ...] = ()  # what --lora_modules all adapts, chosen as training chooses it


def base_layers(shape):
    """The linear layers of the base proper: all but the output head."""
    return [layer for layer in shape.linear_layers if not layer.head]


def base_linear_params(shape):
    """Weights of all linear layers but the head (the part that gets quantized)."""
    return sum(layer.weights for layer in base_layers(shape))


def bits_per_param(bits, double_quant=True):
    """Storage bits per 4-bit (NF4/FP4) base weight, block constants included."""
    if bits != 4:
        raise ValueError(f"bits_per_param: 4-bit only, not {bits} (quantized_base_bytes covers 8, 16 and 32)")
    if double_quant:
        return 4 + 8 / NF4_BLOCK + 32 / (NF4_BLOCK * DQ_BLOCK)
    return 4 + 32 / NF4_BLOCK


def quantized_base_bytes(shape, bits=4, double_quant=True, bf16=True):
    """Bytes of the linear weights but the head's: quantized at 4 or 8 bits, otherwise unquantized
    in the dtype the model loads in (bf16 with --bf16, fp32 without, whether --bits is 16 or 32).
    Layers a 4/8-bit load keeps unquantized (T5's wo) stay in that dtype too."""
    if bits not in BITS:
        raise ValueError(f"--bits: one of {', '.join(map(str, BITS))}; got {bits}")
    dtype_bytes = BF16 if bf16 else FP32
    if bits not in (4, 8):
        return base_linear_params(shape) * dtype_bytes
    quantized = [layer for layer in base_layers(shape) if layer.quantized]
    weights = sum(layer.weights for layer in quantized)
    kept_bytes = (base_linear_params(shape) - weights) * dtype_bytes
    if bits == 4:
        return weights * bits_per_param(bits, double_quant) / 8 + kept_bytes
    rows = sum(layer.out_features for layer in quantized)  # int8 weights plus one fp32 scale per output row
    return weights + FP32 * rows + kept_bytes


def embedding_bytes(shape, dtype_bytes=BF16):
    """Input embeddings plus the LM head (one matrix when tied), kept unquantized."""
    matrices = 1 if shape.tie_word_embeddings else 2
    return matrices * shape.vocab_size * shape.hidden_size * dtype_bytes


def norm_bytes(shape, norms_in_fp32=False, bf16=True):
    """Two RMSNorm weights per layer plus the final norm: bf16, or fp32 with --norms_in_fp32 or
    without --bf16."""
    dtype_bytes = BF16 if bf16 and not norms_in_fp32 else FP32
    return (2 * shape.num_layers + 1) * shape.hidden_size * dtype_bytes


def parse_lora_modules(lora_modules, shape):
    """The short names LoRA targets: 'all' as training chooses them, or a comma list of the model's
    linear layers (its head included)."""
    if lora_modules == "all":
        return shape.all_lora_targets
    names = tuple(name.strip() for name in lora_modules.split(",") if name.strip())
    known = sorted({layer.name for layer in shape.linear_layers})
    if not names or set(names) - set(known):
        raise ValueError(f"--lora_modules: 'all' or a comma list of this model's linear layers, "
                         f"{', '.join(known)}; got {lora_modules!r}")
    return names


def lora_params(shape, lora_r, targets):
    """r * (in + out) over every linear layer named in `targets` (A is r x in, B out x r)."""
    return sum(lora_r * (layer.in_features + layer.out_features) for layer in shape.linear_layers
               if layer.name in targets)


def lora_weight_bytes(n_params, dtype_bytes=BF16):
    return n_params * dtype_bytes


def lora_grad_bytes(n_params, dtype_bytes=BF16):
    """Gradients live in the parameters' dtype and persist across accumulation steps."""
    return n_params * dtype_bytes


def optimizer_bytes(n_params, optim="paged_adamw_32bit", param_dtype_bytes=BF16):
    """AdamW's two moment states per trainable parameter."""
    if optim == "paged_adamw_32bit":
        return n_params * 2 * FP32
    if optim == "paged_adamw_8bit":
        return n_params * 2 * (1 + FP32 / ADAM8_BLOCK)
    if optim == "adamw_torch":
        return n_params * 2 * param_dtype_bytes
    raise ValueError(f"--optim: one of {', '.join(OPTIMIZERS)}; got {optim!r}")


def checkpoint_activation_bytes(shape, batch, seq, gradient_checkpointing=True, norms_in_fp32=False, bf16=True):
    """The layer inputs kept by gradient checkpointing: the residual stream, fp32 with fp32 norms."""
    if not gradient_checkpointing:
        return 0
    return shape.num_layers * batch * seq * shape.hidden_size * activation_profile(norms_in_fp32, bf16).residual


def layer_saved_bytes(shape, batch, seq, attn_implementation="sdpa", lora_dropout=0.1, norms_in_fp32=False, lora_r=64,
                      bf16=True):
    """What autograd keeps for one decoder layer's backward, its input apart (measured coefficients)."""
    profile = activation_profile(norms_in_fp32, bf16)
    h, i = shape.hidden_size, shape.intermediate_size
    per_token = profile.hidden * h + profile.intermediate * i + profile.lora_r * lora_r + SAVED_PER_TOKEN
    if lora_dropout > 0:
        per_token += profile.dropout_hidden * h + profile.dropout_intermediate * i
        if attn_implementation != "eager":
            per_token += profile.sdpa_dropout_hidden * h
    if attn_implementation == "eager":
        return batch * seq * per_token + profile.eager_per_score * batch * shape.num_heads * seq * seq
    return batch * seq * (per_token + SDPA_BYTES_PER_HEAD * shape.num_heads)


def saved_input_bytes(shape, batch, seq, norms_in_fp32=False, bf16=True):
    """The layer input, where the layer itself saves it (an fp32 residual stream)."""
    profile = activation_profile(norms_in_fp32, bf16)
    return batch * seq * shape.hidden_size * profile.residual if profile.saves_input else 0


def backward_temporary_bytes(shape, batch, seq, attn_implementation="sdpa", norms_in_fp32=False, bf16=True):
    """Gradient buffers alive inside one layer's backward (assumed: 2 of each width in the
    residual stream's dtype, plus an fp32 score gradient for eager's fp32 softmax)."""
    dtype_bytes = activation_profile(norms_in_fp32, bf16).residual
    temp = batch * seq * 2 * dtype_bytes * (shape.hidden_size + shape.intermediate_size)
    if attn_implementation == "eager":
        temp += FP32 * batch * shape.num_heads * seq * seq
    return temp


def layer_activation_bytes(shape, batch, seq, gradient_checkpointing=True, attn_implementation="sdpa", lora_dropout=0.1,
                           norms_in_fp32=False, lora_r=64, bf16=True):
    """One layer's recompute working set under checkpointing, all layers' saved tensors without."""
    saved = layer_saved_bytes(shape, batch, seq, attn_implementation, lora_dropout, norms_in_fp32, lora_r, bf16)
    if not gradient_checkpointing:  # no checkpoint line then: count the inputs the layers save
        saved = shape.num_layers * (saved + saved_input_bytes(shape, batch, seq, norms_in_fp32, bf16))
    return saved + backward_temporary_bytes(shape, batch, seq, attn_implementation, norms_in_fp32, bf16)


def dequant_buffer_bytes(shape, bits=4, bf16=True):
    """One copy of the largest base weight, dequantized to the compute dtype for its matmul (none
    for an unquantized base)."""
    if bits not in (4, 8):
        return 0
    largest = max((layer.weights for layer in base_layers(shape) if layer.quantized), default=0)
    return largest * (BF16 if bf16 else FP32)


def logits_bytes(shape, batch, seq, bf16=True):
    """The logits and the loss's fp32 log-softmax; bf16 logits also get an fp32 copy for the loss."""
    per_element = BF16 + FP32 + FP32 if bf16 else FP32 + FP32
    return batch * seq * shape.vocab_size * per_element


def longest_row(source_max_len, target_max_len, max_seq_len=None):
    """The longest row the collator can build: source + target, or a longer --max_seq_len (chat data)."""
    return max(source_max_len + target_max_len, max_seq_len or 0)


def estimate(shape, bits=4, double_quant=True, lora_r=64, lora_modules="all", source_max_len=16,
             target_max_len=512, max_seq_len=None, per_device_train_batch_size=1, gradient_checkpointing=True,
             optim="paged_adamw_32bit", bf16=True, lora_dropout=0.1, attn_implementation="sdpa",
             overhead_mb=DEFAULT_OVERHEAD_MB, norms_in_fp32=False):
    """Ordered {component: bytes}; the peak estimate is their sum. The arguments are named as
    qlora.py's flags; attn_implementation None is transformers' default, sdpa."""
    param_bytes = BF16 if bf16 else FP32  # LoRA layers, embeddings and head: cast to bf16 with --bf16
    n_lora = lora_params(shape, lora_r, parse_lora_modules(lora_modules, shape))
    batch, seq = per_device_train_batch_size, longest_row(source_max_len, target_max_len, max_seq_len)
    attn = attn_implementation or "sdpa"
    return {
        "quantized_base_weights": quantized_base_bytes(shape, bits, double_quant, bf16),
        "embeddings_and_lm_head": embedding_bytes(shape, param_bytes),
        "norms": norm_bytes(shape, norms_in_fp32, bf16),
        "lora_weights": lora_weight_bytes(n_lora, param_bytes),
        "lora_gradients": lora_grad_bytes(n_lora, param_bytes),
        "optimizer_states": optimizer_bytes(n_lora, optim, param_bytes),
        "checkpointed_activations": checkpoint_activation_bytes(
            shape, batch, seq, gradient_checkpointing, norms_in_fp32, bf16
        ),
        "layer_activations": layer_activation_bytes(
            shape, batch, seq, gradient_checkpointing, attn, lora_dropout, norms_in_fp32, lora_r, bf16
        ),
        "dequantized_weight_buffer": dequant_buffer_bytes(shape, bits, bf16),
        "logits": logits_bytes(shape, batch, seq, bf16),
        "cuda_context_overhead": overhead_mb * MB,
    }


def summarize(components, gpu_memory_gb, optim):
    """Components and total in MB, and whether the run fits the card (with the optimizer states
    paged out to CPU RAM, for the paged optimizers)."""
    total = sum(components.values())
    capacity = gpu_memory_gb * GB
    paged = optim in PAGED_OPTIMIZERS
    without_states = total - components["optimizer_states"]
    return {
        "components_mb": {name: round(value / MB, 1) for name, value in components.items()},
        "total_mb": round(sum(round(value / MB, 1) for value in components.values()), 1),
        "gpu_memory_gb": gpu_memory_gb,
        "fits": total <= capacity,
        "fits_with_paging": total <= capacity or (paged and without_states <= capacity),
    }


# What FSDP full sharding divides over the GPUs: the weights, their gradients and the optimizer
# states. Activations, logits and the gathered layer stay whole on every GPU.
SHARDED_COMPONENTS = ("quantized_base_weights", "embeddings_and_lm_head", "norms", "lora_weights",
                      "lora_gradients", "optimizer_states")
FSDP_GPU_COUNTS = (2, 4, 8)
SHORTEST_TARGET = 64


def shard_over(components, gpus):
    """Per-GPU {component: bytes} with the sharded components split over `gpus` (FSDP full shard)."""
    return {name: value / gpus if name in SHARDED_COMPONENTS else value for name, value in components.items()}


def smaller_batches(batch, accumulation):
    """(per-device batch, accumulation) pairs with the same rows per step, largest batch first.

    >>> smaller_batches(4, 4)
    [(2, 8), (1, 16)]
    """
    return [(smaller, accumulation * batch // smaller) for smaller in range(batch - 1, 0, -1) if batch % smaller == 0]


def shorter_lengths(source_max_len, target_max_len, max_seq_len=None):
    """Halved target lengths (and --max_seq_len with it), down to SHORTEST_TARGET tokens."""
    lengths, target, seq = [], target_max_len // 2, max_seq_len
    while target >= SHORTEST_TARGET:
        seq = seq // 2 if seq else None
        lengths.append({"source_max_len": source_max_len, "target_max_len": target, "max_seq_len": seq})
        target //= 2
    return lengths


def nearest_fitting_settings(shape, arguments, accumulation, capacity_bytes, overhead_mb=DEFAULT_OVERHEAD_MB):
    """For a run that does not fit: [(the flags that change, its per-GPU components)], one for
    each kind of change that fits on its own (smaller batch with more accumulation, shorter rows,
    activation checkpointing, an 8-bit paged optimizer, FSDP over more GPUs), each found by
    estimating again with that change. The nearest of each kind: the largest batch, the longest
    rows, the fewest GPUs."""
    def estimate_with(**change):
        return estimate(shape, overhead_mb=overhead_mb, **{**arguments, **change})

    def fits(components):
        return sum(components.values()) <= capacity_bytes

    candidates = [
        [(f"--per_device_train_batch_size {batch} --gradient_accumulation_steps {more}",
          estimate_with(per_device_train_batch_size=batch))
         for batch, more in smaller_batches(arguments["per_device_train_batch_size"], accumulation)],
        [(f"--target_max_len {lengths['target_max_len']}"
          + (f" --max_seq_len {lengths['max_seq_len']}" if lengths["max_seq_len"] else ""), estimate_with(**lengths))
         for lengths in shorter_lengths(arguments["source_max_len"], arguments["target_max_len"],
                                        arguments["max_seq_len"])],
        [] if arguments["gradient_checkpointing"] else [
            ("--activation_checkpointing True", estimate_with(gradient_checkpointing=True))],
        [] if arguments["optim"] == "paged_adamw_8bit" else [
            ("--optim paged_adamw_8bit", estimate_with(optim="paged_adamw_8bit"))],
        [(f"FSDP over {gpus} GPUs (examples/accelerate/fsdp_qlora.yaml)", shard_over(estimate_with(), gpus))
         for gpus in FSDP_GPU_COUNTS],
    ]
    nearest = (next((item for item in kind if fits(item[1])), None) for kind in candidates)
    return [item for item in nearest if item is not None]


def describe_assumptions(arguments, accumulation):
    """The settings the estimate rests on, in one line, so a reader can tell which run it is for."""
    seq = longest_row(arguments["source_max_len"], arguments["target_max_len"], arguments["max_seq_len"])
    return (f"assumes: per-device batch {arguments['per_device_train_batch_size']} (x {accumulation} accumulation; "
            f"accumulation does not add memory), rows of up to {seq} tokens, activation checkpointing "
            f"{'on' if arguments['gradient_checkpointing'] else 'off'}, optimizer {arguments['optim']}, "
            f"{'bf16' if arguments['bf16'] else 'fp32'} compute, {arguments['bits']}-bit base, LoRA r "
            f"{arguments['lora_r']} (--lora_modules {arguments['lora_modules']}), one GPU")


def peak_memory_mb(device):
    """This process's peak so far: CUDA max allocated on a GPU `device` (what the estimate predicts),
    the maximum resident set size on CPU (Linux reports it in KiB)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / MB)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
