"""Merge a trained QLoRA adapter into its base model and save one standalone 16/32-bit checkpoint.

    python scripts/merge_adapter.py --base_model huggyllama/llama-7b \
        --adapter output/guanaco-7b/checkpoint-1875/adapter_model --output merged/guanaco-7b [--dequantize]

Two bases to merge into (the adapter was trained on top of the NF4-quantized base, and NF4 rounds
every weight):

* default: the original 16-bit weights. The merged model differs from what was trained and
  evaluated (4-bit base + adapter) by the NF4 rounding error: on this stack a max logit gap of
  about 0.31. Choose it for the full-precision base weights under the adapter.
* ``--dequantize``: quantize the base to NF4 as in training, dequantize it, then merge. The merged
  model reproduces 4-bit base + adapter up to the output dtype's rounding (fp32: within 1e-4,
  tested; STACK-NOTES measured ~0.016 against bitsandbytes' bf16 CPU inference kernel): use it
  when the merged model must behave like the one you trained and evaluated.

The project's tokenizer loader adds a [PAD] token when the base has none and grows the embeddings
(new row = mean of the old rows); the adapter does not store embeddings, so the base is resized
the same way before the adapter is applied, and the resized model is saved with that tokenizer.
Weights are written as safetensors only.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# torch, peft and qlorakit are imported where they are used: --help and bad paths answer at once.
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def load_base(base_model, dtype, dequantize=False):
    """(base model, tokenizer) in `dtype`, embeddings already resized to the project's tokenizer.

    With dequantize, the weights are the NF4 round trip of the originals: exactly what the 4-bit
    kernels multiplied with during training, stored in `dtype`.
    """
    from qlorakit.model import load_for_inference

    if not dequantize:
        return load_for_inference(base_model, bits=16, compute_dtype=dtype)
    model, tokenizer = load_for_inference(base_model, bits=4, compute_dtype=dtype)
    return model.dequantize(dtype=dtype), tokenizer


def merge_adapter(base_model, adapter, output, dtype="bfloat16", dequantize=False):
    """Apply the adapter to the base, fold it into the weights and save model + tokenizer to output.

    dtype: a torch dtype or its name ("bfloat16", "float16", "float32").
    """
    import torch
    from peft import PeftModel

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model, tokenizer = load_base(base_model, dtype, dequantize)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.config.dtype = dtype
    merged.save_pretrained(output)  # safetensors: transformers 5 writes nothing else
    tokenizer.padding_side = "right"  # loaded left-padded for generation; save the usual default
    tokenizer.save_pretrained(output)
    return merged, tokenizer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Without --dequantize the merge goes into the original 16-bit weights (differs from the "
               "trained 4-bit base + adapter by the NF4 error, max logit gap ~0.31); with it, into the "
               "dequantized NF4 base (matches 4-bit base + adapter up to dtype rounding).",
    )
    parser.add_argument("--base_model", required=True, help="hub id or directory of the base the adapter was trained on")
    parser.add_argument("--adapter", required=True, help="adapter directory (checkpoint-N/adapter_model)")
    parser.add_argument("--output", required=True, help="directory for the merged model and its tokenizer")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of the saved weights (default bf16)")
    parser.add_argument("--dequantize", action="store_true",
                        help="merge into the NF4-quantized-then-dequantized base the adapter was trained on, "
                             "instead of the original 16-bit weights")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(os.path.join(args.adapter, "adapter_config.json")):
        print(f"error: {args.adapter}: no adapter_config.json (pass checkpoint-N/adapter_model)", file=sys.stderr)
        return 2
    merge_adapter(args.base_model, args.adapter, args.output, DTYPES[args.dtype], args.dequantize)
    base = "dequantized NF4 base" if args.dequantize else "original 16-bit base"
    print(f"merged {args.adapter} into the {base} of {args.base_model} ({args.dtype}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
