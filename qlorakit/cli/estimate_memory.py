"""Estimate the peak GPU memory of QLoRA training, component by component, before renting a GPU.

    python scripts/estimate_memory.py --config llama-7b                      # Guanaco-7B recipe
    python scripts/estimate_memory.py --config llama-65b --gpu_memory_gb 48 --json
    python scripts/estimate_memory.py --model_name_or_path /path/to/model --target_max_len 1024
    python scripts/estimate_memory.py --config llama-7b --norms_in_fp32      # the 2023 reference's norms

Every component is a small pure function that returns bytes; the CLI adds them up. MB here is
2**20 bytes and GB 2**30 (what torch and nvidia-smi report; a "24 GB" card holds 24 GiB).

Components and assumptions (defaults = the Guanaco recipe of scripts/qlora_common.sh):

* quantized base: every q,k,v,o,gate,up,down weight. NF4 stores 4 bits per weight plus one
  absmax constant per block of 64 weights: fp32 (32/64 = 0.5 bit) or, with double quant, 8 bits
  per block plus one fp32 second-level constant per 256 blocks: 4 + 8/64 + 32/(64*256) =
  4.127 bits per weight. 8-bit (LLM.int8): 1 byte per weight plus one fp32 scale per output row.
  16-bit: 2 bytes. bitsandbytes' per-tensor extras (a 256-entry code book) are left out (<1 MB).
* embeddings and LM head stay unquantized in bf16; norms in bf16, or in fp32 with --norms_in_fp32
  (as the 2023 QLoRA reference kept them; qlora.py takes the same flag).
* LoRA: r * (in + out) parameters per adapted linear layer, stored in bf16 (the project casts
  LoRA layers to bf16 with --bf16; --lora_dtype fp32 otherwise); gradients in the same dtype.
* optimizer: paged_adamw_32bit keeps 2 fp32 states per trainable parameter (8 bytes),
  paged_adamw_8bit 2 bytes plus one fp32 absmax per 256-value block per state, adamw_torch 2
  states in the parameters' own dtype. All of it is counted as resident; a paged optimizer can
  evict it to CPU RAM under pressure, which the "fits with paging" line accounts for.
* activations, measured by benchmarks/activation_bytes.py with saved-tensor hooks on this stack
  (transformers 5.23, peft 0.21.2, bitsandbytes 0.50.2, bf16 autocast, a 4-bit LLaMA layer with
  LoRA on all seven linears; the tests check them against a measurement at sizes outside the
  fit). With bf16 norms (the default)
  everything runs in bf16. With --norms_in_fp32 the norm outputs are fp32, Linear4bit returns
  its input's dtype, so q/k/v/gate/up outputs, the MLP and the residual stream are fp32. So
  - each checkpointed layer input is batch*seq*hidden*2 bytes, *4 with fp32 norms (times
    num_layers);
  - one layer's recompute working set (what autograd holds while that layer's backward runs),
    per batch*seq element: 20*hidden + 8*intermediate (fp32 norms: 22*hidden + 14*intermediate)
    + 14*lora_r (the bf16 LoRA A outputs) + 8 (the norms' fp32 1/rms); with LoRA dropout > 0
    another 18*hidden + 2*intermediate (fp32 norms: 12*hidden + 2*intermediate), 2*hidden more
    with sdpa; sdpa's fp32 log-sum-exp is 4 bytes per head; eager keeps 6 bytes per attention
    score (batch*heads*seq*seq) instead. Flash attention is assumed to behave like sdpa;
  - an fp32 layer input is also saved by the layer itself, so without checkpointing it stays
    (a bf16 one is not: the norm saves its own fp32 copy, counted above);
  - backward gradient temporaries (assumed, not measured): two tensors of batch*seq*intermediate
    and two of batch*seq*hidden in the residual stream's dtype (bf16, fp32 with fp32 norms), plus
    one fp32 score gradient for eager (its softmax is fp32 either way);
  - one dequantized bf16 copy of the largest base weight (4-bit and 8-bit matmuls dequantize).
  Without gradient checkpointing every layer's working set is kept instead (num_layers times).
* logits: batch*seq*vocab at 10 bytes per element: bf16 logits, their fp32 copy for the loss and
  the fp32 log-softmax saved for backward. seq = source_max_len + target_max_len (the longest
  row the collator can build).
* a constant for the CUDA context, cuBLAS workspaces and allocator fragmentation (default 768 MB;
  it is not in torch.cuda.max_memory_allocated but is in nvidia-smi).

The sum is an upper bound on the allocator's peak: the logits peak (end of forward) and the
layer recompute peak (during backward) do not coexist, and both are small for short rows.

Checked against the QLoRA paper (arXiv 2305.14314); the full table is in docs/MEMORY.md. The
paper's 7B example of LoRA weights at 0.2% of the parameters is 26 MB, here 25.7 MB (bf16). The
NF4+DQ base with bf16 embeddings and head is 3,686 MB for LLaMA-7B (3.9 GB decimal, the floor
set by the paper's 4.127 bits per weight; the 5,048 MB quoted for the paper's memory figure is
not reproduced by any dtype choice here) and 32,860 MB for 65B (34.5 GB decimal). The paper's
model sizes (Table 6: 5/10/21/41 GB for 7B/13B/33B/65B) are 14-39% above the weights plus
adapter counted here. With the paper's fp32 norms (--norms_in_fp32) the Guanaco-65B recipe comes
to 44.0 GiB, under the paper's 48 GB GPU, and 33B lands within 0.1 GB of 24 GB, the case for
which the paper needed paged optimizers; with bf16 norms they come to 43.2 and 23.5 GiB.
"""

import argparse
import json
from dataclasses import dataclass

from qlorakit.errors import InputError, run_main

MB = 2**20
GB = 2**30
BF16, FP32 = 2, 4
NF4_BLOCK = 64
DQ_BLOCK = 256
ADAM8_BLOCK = 256
DEFAULT_OVERHEAD_MB = 768
ALL_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit", "adamw_torch")
PAGED_OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit")

# What autograd saves for one decoder layer, in bytes per batch*seq element unless named otherwise,
# measured by benchmarks/activation_bytes.py (LoRA on all seven linears, bf16 autocast). Keyed by
# norms_in_fp32: "residual" is the bytes per element of the residual stream (the checkpointed
# layer input) and of the MLP activations; the fp32 stream is also saved by the layer itself
# (the norm's upcast is a no-op); "dropout_hidden" is the extra with LoRA dropout under eager.
ACTIVATION_COEFFICIENTS = {
    False: {"residual": BF16, "saves_input": False, "hidden": 20, "intermediate": 8, "dropout_hidden": 18},
    True: {"residual": FP32, "saves_input": True, "hidden": 22, "intermediate": 14, "dropout_hidden": 12},
}
SAVED_PER_LORA_R = 14  # each adapter's bf16 A output, kept for B: 7 linears * 2 bytes
SAVED_PER_TOKEN = 8  # the two norms' fp32 1/rms
DROPOUT_SAVED_PER_INTER = 2
SDPA_DROPOUT_SAVED_PER_HIDDEN = 2  # sdpa saves its output, the o_proj input: dropout cannot free it
SDPA_BYTES_PER_HEAD = 4  # sdpa's fp32 log-sum-exp per head and token (flash attention: assumed alike)
EAGER_BYTES_PER_SCORE = 6  # fp32 softmax and its bf16 copy
LOGITS_BYTES_PER_ELEMENT = BF16 + FP32 + FP32


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    tie_word_embeddings: bool = False

    @property
    def kv_dim(self):
        heads = self.num_kv_heads or self.num_heads
        return heads * (self.head_dim or self.hidden_size // self.num_heads)

    @property
    def q_dim(self):
        return self.num_heads * (self.head_dim or self.hidden_size // self.num_heads)


# LLaMA-1 shapes (Touvron et al. 2023, Table 2; the Hugging Face conversions' config.json).
LLAMA_CONFIGS = {
    "llama-7b": ModelShape(4096, 11008, 32, 32, 32000),
    "llama-13b": ModelShape(5120, 13824, 40, 40, 32000),
    "llama-33b": ModelShape(6656, 17920, 60, 52, 32000),
    "llama-65b": ModelShape(8192, 22016, 80, 64, 32000),
}


def shape_from_config(config):
    """ModelShape of a transformers config (LLaMA-style: gate/up/down MLP, q/k/v/o attention)."""
    return ModelShape(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        vocab_size=config.vocab_size,
        num_kv_heads=getattr(config, "num_key_value_heads", None),
        head_dim=getattr(config, "head_dim", None),
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


def load_shape(model_name_or_path):
    """Read config.json through AutoConfig (a local directory works offline)."""
    from transformers import AutoConfig

    return shape_from_config(AutoConfig.from_pretrained(model_name_or_path))


def linear_layer_shapes(shape):
    """(in_features, out_features) of each base linear layer of one decoder layer."""
    h, i = shape.hidden_size, shape.intermediate_size
    return {
        "q_proj": (h, shape.q_dim),
        "k_proj": (h, shape.kv_dim),
        "v_proj": (h, shape.kv_dim),
        "o_proj": (shape.q_dim, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def base_linear_params(shape):
    """Weights of all decoder linear layers (the part that gets quantized)."""
    per_layer = sum(fan_in * fan_out for fan_in, fan_out in linear_layer_shapes(shape).values())
    return shape.num_layers * per_layer


def bits_per_param(bits, double_quant=True):
    """Storage bits per base weight, block constants included (4-bit NF4/FP4 and 16-bit)."""
    if bits == 4:
        if double_quant:
            return 4 + 8 / NF4_BLOCK + 32 / (NF4_BLOCK * DQ_BLOCK)
        return 4 + 32 / NF4_BLOCK
    if bits == 16:
        return 16
    raise ValueError(f"bits_per_param: 4 or 16, not {bits} (8-bit has per-row scales: quantized_base_bytes)")


def quantized_base_bytes(shape, bits=4, double_quant=True):
    """Bytes of the decoder's linear weights at the chosen precision."""
    if bits == 8:  # int8 weights plus one fp32 scale per output row
        rows = sum(fan_out for _, fan_out in linear_layer_shapes(shape).values()) * shape.num_layers
        return base_linear_params(shape) + FP32 * rows
    return base_linear_params(shape) * bits_per_param(bits, double_quant) / 8


def embedding_bytes(shape, dtype_bytes=BF16):
    """Input embeddings plus the LM head (one matrix when tied), kept unquantized."""
    matrices = 1 if shape.tie_word_embeddings else 2
    return matrices * shape.vocab_size * shape.hidden_size * dtype_bytes


def norm_bytes(shape, norms_in_fp32=False):
    """Two RMSNorm weights per layer plus the final norm: bf16, or fp32 with --norms_in_fp32."""
    return (2 * shape.num_layers + 1) * shape.hidden_size * (FP32 if norms_in_fp32 else BF16)


def parse_lora_modules(lora_modules):
    if lora_modules == "all":
        return ALL_LORA_MODULES
    names = tuple(name.strip() for name in lora_modules.split(",") if name.strip())
    unknown = [name for name in names if name not in ALL_LORA_MODULES]
    if unknown or not names:
        raise ValueError(f"--lora_modules: 'all' or a comma list of {', '.join(ALL_LORA_MODULES)}; got {lora_modules!r}")
    return names


def lora_params_per_layer(shape, lora_r, modules=ALL_LORA_MODULES):
    """r * (in + out) for each adapted linear layer of one decoder layer (A is r x in, B out x r)."""
    shapes = linear_layer_shapes(shape)
    return sum(lora_r * (shapes[name][0] + shapes[name][1]) for name in modules)


def lora_params(shape, lora_r, modules=ALL_LORA_MODULES):
    return shape.num_layers * lora_params_per_layer(shape, lora_r, modules)


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
    raise ValueError(f"optim: one of {', '.join(OPTIMIZERS)}; got {optim!r}")


def checkpoint_activation_bytes(shape, batch, seq, gradient_checkpointing=True, norms_in_fp32=False):
    """The layer inputs kept by gradient checkpointing: the residual stream, fp32 with fp32 norms."""
    if not gradient_checkpointing:
        return 0
    return shape.num_layers * batch * seq * shape.hidden_size * ACTIVATION_COEFFICIENTS[norms_in_fp32]["residual"]


def layer_saved_bytes(shape, batch, seq, attn_implementation="sdpa", lora_dropout=0.1, norms_in_fp32=False, lora_r=64):
    """What autograd keeps for one decoder layer's backward, its input apart (measured coefficients)."""
    coef = ACTIVATION_COEFFICIENTS[norms_in_fp32]
    h, i = shape.hidden_size, shape.intermediate_size
    per_token = coef["hidden"] * h + coef["intermediate"] * i + SAVED_PER_LORA_R * lora_r + SAVED_PER_TOKEN
    if lora_dropout > 0:
        per_token += coef["dropout_hidden"] * h + DROPOUT_SAVED_PER_INTER * i
        if attn_implementation != "eager":
            per_token += SDPA_DROPOUT_SAVED_PER_HIDDEN * h
    if attn_implementation == "eager":
        return batch * seq * per_token + EAGER_BYTES_PER_SCORE * batch * shape.num_heads * seq * seq
    return batch * seq * (per_token + SDPA_BYTES_PER_HEAD * shape.num_heads)


def saved_input_bytes(shape, batch, seq, norms_in_fp32=False):
    """The layer input, where the layer itself saves it (an fp32 residual stream)."""
    coef = ACTIVATION_COEFFICIENTS[norms_in_fp32]
    return batch * seq * shape.hidden_size * coef["residual"] if coef["saves_input"] else 0


def backward_temporary_bytes(shape, batch, seq, attn_implementation="sdpa", norms_in_fp32=False):
    """Gradient buffers alive inside one layer's backward (assumed: 2 of each width in the
    residual stream's dtype, plus an fp32 score gradient for eager's fp32 softmax)."""
    dtype_bytes = ACTIVATION_COEFFICIENTS[norms_in_fp32]["residual"]
    temp = batch * seq * 2 * dtype_bytes * (shape.hidden_size + shape.intermediate_size)
    if attn_implementation == "eager":
        temp += FP32 * batch * shape.num_heads * seq * seq
    return temp


def layer_activation_bytes(shape, batch, seq, gradient_checkpointing=True, attn_implementation="sdpa", lora_dropout=0.1,
                           norms_in_fp32=False, lora_r=64):
    """One layer's recompute working set under checkpointing, all layers' saved tensors without."""
    saved = layer_saved_bytes(shape, batch, seq, attn_implementation, lora_dropout, norms_in_fp32, lora_r)
    if not gradient_checkpointing:  # no checkpoint line then: count the inputs the layers save
        saved = shape.num_layers * (saved + saved_input_bytes(shape, batch, seq, norms_in_fp32))
    return saved + backward_temporary_bytes(shape, batch, seq, attn_implementation, norms_in_fp32)


def dequant_buffer_bytes(shape, bits=4):
    """One bf16 copy of the largest base weight, dequantized for its matmul (none at 16 bits)."""
    if bits == 16:
        return 0
    return max(fan_in * fan_out for fan_in, fan_out in linear_layer_shapes(shape).values()) * BF16


def logits_bytes(shape, batch, seq):
    """bf16 logits, their fp32 copy and the fp32 log-softmax of the loss."""
    return batch * seq * shape.vocab_size * LOGITS_BYTES_PER_ELEMENT


def estimate(shape, bits=4, double_quant=True, lora_r=64, lora_modules="all", source_max_len=16,
             target_max_len=512, per_device_train_batch_size=1, gradient_checkpointing=True,
             optim="paged_adamw_32bit", lora_dtype="bf16", lora_dropout=0.1, attn_implementation="sdpa",
             overhead_mb=DEFAULT_OVERHEAD_MB, norms_in_fp32=False):
    """Ordered {component: bytes}; the peak estimate is their sum."""
    lora_bytes = {"bf16": BF16, "fp32": FP32}[lora_dtype]
    n_lora = lora_params(shape, lora_r, parse_lora_modules(lora_modules))
    batch, seq = per_device_train_batch_size, source_max_len + target_max_len
    return {
        "quantized_base_weights": quantized_base_bytes(shape, bits, double_quant),
        "embeddings_and_lm_head": embedding_bytes(shape),
        "norms": norm_bytes(shape, norms_in_fp32),
        "lora_weights": lora_weight_bytes(n_lora, lora_bytes),
        "lora_gradients": lora_grad_bytes(n_lora, lora_bytes),
        "optimizer_states": optimizer_bytes(n_lora, optim, lora_bytes),
        "checkpointed_activations": checkpoint_activation_bytes(
            shape, batch, seq, gradient_checkpointing, norms_in_fp32
        ),
        "layer_activations": layer_activation_bytes(
            shape, batch, seq, gradient_checkpointing, attn_implementation, lora_dropout, norms_in_fp32, lora_r
        ),
        "dequantized_weight_buffer": dequant_buffer_bytes(shape, bits),
        "logits": logits_bytes(shape, batch, seq),
        "cuda_context_overhead": overhead_mb * MB,
    }


def summarize(components, gpu_memory_gb, optim):
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


def str2bool(value):
    if isinstance(value, bool):
        return value
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_name_or_path", help="hub id or local directory with config.json")
    source.add_argument("--config", choices=sorted(LLAMA_CONFIGS), help="a LLaMA-1 shape, no download")
    parser.add_argument("--bits", type=int, choices=(4, 8, 16), default=4)
    parser.add_argument("--double_quant", type=str2bool, default=True)
    parser.add_argument("--lora_r", type=int, default=64)
    parser.add_argument("--lora_modules", default="all", help="'all' or a comma list of q_proj,...,down_proj")
    parser.add_argument("--lora_dropout", type=float, default=0.1)
    parser.add_argument("--lora_dtype", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 with qlora.py --bf16 (the recipe), fp32 without")
    parser.add_argument("--source_max_len", type=int, default=16)
    parser.add_argument("--target_max_len", type=int, default=512)
    parser.add_argument("--per_device_train_batch_size", type=int, default=1)
    parser.add_argument("--gradient_checkpointing", type=str2bool, default=True)
    parser.add_argument("--optim", choices=OPTIMIZERS, default="paged_adamw_32bit")
    parser.add_argument("--attn_implementation", choices=("sdpa", "flash_attention_2", "eager"), default="sdpa")
    parser.add_argument("--norms_in_fp32", type=str2bool, nargs="?", const=True, default=False,
                        help="norms kept in fp32 as qlora.py --norms_in_fp32 (the 2023 reference): an fp32 "
                             "residual stream and MLP")
    parser.add_argument("--overhead_mb", type=float, default=DEFAULT_OVERHEAD_MB,
                        help="CUDA context, workspaces and fragmentation (MB)")
    parser.add_argument("--gpu_memory_gb", type=float, default=24)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


def format_table(report, name):
    lines = [f"QLoRA training memory estimate: {name}", f"{'component':<28}{'MB':>12}"]
    lines += [f"{component:<28}{value:>12,.1f}" for component, value in report["components_mb"].items()]
    lines.append(f"{'total (estimated peak)':<28}{report['total_mb']:>12,.1f}")
    verdict = "fits" if report["fits"] else "does NOT fit"
    lines.append(f"{verdict} in {report['gpu_memory_gb']:g} GB ({report['gpu_memory_gb'] * 1024:,.0f} MB)")
    if not report["fits"] and report["fits_with_paging"]:
        lines.append("fits only if the paged optimizer evicts its states to CPU RAM (slower steps)")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    try:
        shape = LLAMA_CONFIGS[args.config] if args.config else load_shape(args.model_name_or_path)
        components = estimate(
            shape, bits=args.bits, double_quant=args.double_quant, lora_r=args.lora_r,
            lora_modules=args.lora_modules, source_max_len=args.source_max_len,
            target_max_len=args.target_max_len, per_device_train_batch_size=args.per_device_train_batch_size,
            gradient_checkpointing=args.gradient_checkpointing, optim=args.optim, lora_dtype=args.lora_dtype,
            lora_dropout=args.lora_dropout, attn_implementation=args.attn_implementation,
            overhead_mb=args.overhead_mb, norms_in_fp32=args.norms_in_fp32,
        )
    except (ValueError, OSError, AttributeError) as error:
        raise InputError(str(error)) from error
    report = summarize(components, args.gpu_memory_gb, args.optim)
    name = args.config or args.model_name_or_path
    if args.json:
        print(json.dumps({"model": name, "bits": args.bits, "lora_r": args.lora_r,
                          "seq_len": args.source_max_len + args.target_max_len,
                          "per_device_train_batch_size": args.per_device_train_batch_size,
                          "norms_in_fp32": args.norms_in_fp32, **report}))
    else:
        print(format_table(report, name))
    return 0


def console_main():
    """The ``qlora-estimate-memory`` command."""
    return run_main(main)
