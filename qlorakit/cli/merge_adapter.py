"""Merge a trained QLoRA adapter into its base model and save one standalone 16/32-bit checkpoint.

    python scripts/merge_adapter.py --base_model huggyllama/llama-7b \
        --adapter output/guanaco-7b/checkpoint-1875/adapter_model --output merged/guanaco-7b [--dequantize]

Two bases to merge into (the adapter was trained on top of a quantized base, NF4 by default, and
quantization rounds every weight):

* default: the original 16-bit weights. The merged model differs from what was trained and
  evaluated (4-bit base + adapter) by the rounding error: on a 7B LLaMA-shaped model a max logit
  gap of about 0.31. Choose it for the full-precision base weights under the adapter.
* ``--dequantize``: quantize the base exactly as in training, dequantize it, then merge. The
  quantization is read from the adapter's ``base_loading.json`` (written by qlora.py: 4 or 8
  bits, NF4 or FP4, double quantization); ``--bits``, ``--quant_type`` and ``--double_quant``
  override it, and adapters without the file get NF4 with double quantization, with a notice.
  The merged model reproduces quantized base + adapter up to the output dtype's rounding (fp32:
  within 1e-4, tested): use it when the merged model must behave like the one you trained and
  evaluated.

The project's tokenizer loader adds a [PAD] token when the base has none and grows the embeddings
(new row = mean of the old rows); the adapter does not store embeddings, so the base is resized
the same way before the adapter is applied, and the resized model is saved with that tokenizer,
whose chat template is the one the adapter was trained with (its prompt_template.json), so servers
that read the tokenizer's template prompt the merged model as it was trained. Its
generation_config.json holds qlora.py's decoding settings (greedy, up to 256 new tokens: the
defaults of its generation flags), so servers that read the file decode as the run's --do_predict did.
Weights are written as safetensors only.

``--gguf`` also writes ``model.gguf`` into the folder, for llama.cpp and Ollama: the same merged
weights (``--gguf_type`` f16 by default, bf16 or q8_0), the tokenizer and the trained chat
template. LLaMA, Mistral and Qwen2 models with byte-level BPE tokenizers (qlorakit.gguf_export);
other bases are refused before anything is merged.
"""

import argparse
import os
import shutil
import tempfile

from qlorakit.adapter_paths import add_adapter_argument, check_adapter
from qlorakit.base_loading import add_base_loading_arguments, loading_overrides
from qlorakit.errors import ModelError, run_main
from qlorakit.gguf_export import GGUF_FILE, GGUF_TYPES, check_gguf_export, gguf_summary, write_gguf
from qlorakit.jsonl import give_default_modes
from qlorakit.trained_template import read_template_record

# torch, peft, gguf and qlorakit's model modules are imported where they are used: --help and bad paths answer at once.
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DEFAULT_GGUF_TYPE = "f16"


def load_base(base_model, adapter, dtype, dequantize=False, **overrides):
    """(base model, tokenizer, how it was loaded) in `dtype`, embeddings resized to the project's tokenizer.

    With dequantize, the weights are the quantization round trip of the originals, quantized as
    the adapter was trained: exactly what the kernels multiplied with during training, stored in
    `dtype`.
    """
    from qlorakit.inference_model import inference_loading, load_base_for_inference
    from qlorakit.quantization import dequantize_base

    loading, _ = inference_loading(adapter if dequantize else None, compute_dtype=dtype,
                                   **(overrides if dequantize else {"bits": 16}))
    model, tokenizer = load_base_for_inference(base_model, loading, adapter=adapter)
    if loading.bits in (4, 8):
        model = dequantize_base(model, dtype)
    return model, tokenizer, loading


def merge_adapter(base_model, adapter, output, dtype="bfloat16", dequantize=False, gguf_type=None, **overrides):
    """Apply the adapter to the base, fold it into the weights and save model + tokenizer to output.

    dtype: a torch dtype or its name ("bfloat16", "float16", "float32"). gguf_type: also write
    output/model.gguf with matrices in this GGUF_TYPES key. overrides: base-loading settings
    (base_loading.loading_overrides) for the dequantized base instead of the adapter's record.
    Returns (merged model, tokenizer, how the base was loaded).
    """
    import torch

    from qlorakit.lora import load_adapter

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    check_output_free(output)
    model, tokenizer, loading = load_base(base_model, adapter, dtype, dequantize, **overrides)
    merged = load_adapter(model, adapter).merge_and_unload()
    merged.config.dtype = dtype
    # The [PAD] row the tokenizer loader may have added is in the weights: say which id it is.
    merged.config.pad_token_id = tokenizer.pad_token_id
    merged.generation_config = trained_generation_config(merged, tokenizer)
    tokenizer.padding_side = "right"  # loaded left-padded for generation; save the usual default
    if trained := read_template_record(adapter):
        tokenizer.chat_template = trained["template"]

    def save(folder):
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if gguf_type:
            write_gguf(merged, tokenizer, os.path.join(folder, GGUF_FILE), gguf_type, os.path.basename(output))

    save_atomically(output, save)
    return merged, tokenizer, loading


def trained_generation_config(model, tokenizer):
    """qlora.py's decoding settings (the defaults of its generation flags, what --do_predict uses)
    with the merged model's special tokens, including the [PAD] row the tokenizer loader may add."""
    from transformers import GenerationConfig

    from qlorakit.config import GenerationArguments
    from qlorakit.generation import build_generation_config, decoding_settings

    settings = build_generation_config(decoding_settings(GenerationArguments()))
    own = model.generation_config or GenerationConfig.from_model_config(model.config)
    settings.bos_token_id, settings.eos_token_id = own.bos_token_id, own.eos_token_id
    settings.pad_token_id = tokenizer.pad_token_id
    return settings


def check_output_free(output):
    """The merged model gets a folder of its own: an existing one is replaced only when empty."""
    if os.path.exists(output) and not (os.path.isdir(output) and not os.listdir(output)):
        raise ModelError(f"--output {output} exists and is not an empty folder: choose a new one")


def save_atomically(output, save):
    """Run save(folder) on a temporary folder beside output and rename it to output once whole:
    a merge that fails halfway (a full disk) leaves no output folder that looks like a model."""
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.partial-", dir=parent)
    try:
        save(partial)
        give_default_modes(partial)  # mkdtemp's folder and safetensors' files are owner-only
        if os.path.isdir(output):
            os.rmdir(output)  # empty (check_output_free)
        os.rename(partial, output)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise ModelError(f"cannot write the merged model to {output}: {error.strerror or error}") from error
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Without --dequantize the merge goes into the original 16-bit weights (differs from the "
               "trained 4-bit base + adapter by the quantization error); with it, into the base quantized as "
               "the adapter was trained (its base_loading.json) and dequantized (matches quantized base + "
               "adapter up to dtype rounding).",
    )
    parser.add_argument("--base_model", required=True, help="hub id or directory of the base the adapter was trained on")
    add_adapter_argument(parser, required=True, absent="required")
    parser.add_argument("--output", required=True, help="directory for the merged model and its tokenizer")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of the saved weights (default bf16)")
    parser.add_argument("--dequantize", action="store_true",
                        help="merge into the quantized-then-dequantized base the adapter was trained on, "
                             "instead of the original 16-bit weights")
    parser.add_argument("--gguf", action="store_true",
                        help=f"also write {GGUF_FILE} into --output for llama.cpp / Ollama (LLaMA, Mistral, Qwen2)")
    parser.add_argument("--gguf_type", choices=list(GGUF_TYPES),
                        help=f"how --gguf stores the weight matrices (default {DEFAULT_GGUF_TYPE}; q8_0: 8-bit, "
                             "about half the size)")
    add_base_loading_arguments(parser, without=("compute_dtype",))  # --dtype says it
    args = parser.parse_args(argv)
    if args.gguf_type and not args.gguf:
        parser.error("--gguf_type applies to --gguf: add --gguf")
    return args


def main(argv=None):
    args = parse_args(argv)
    check_adapter(args.adapter)
    check_output_free(args.output)
    gguf_type = (args.gguf_type or DEFAULT_GGUF_TYPE) if args.gguf else None
    if gguf_type:
        check_gguf_export(args.base_model)
    _, _, loading = merge_adapter(args.base_model, args.adapter, args.output, DTYPES[args.dtype], args.dequantize,
                                  gguf_type, **loading_overrides(args))
    base = f"dequantized {loading.describe().split(',')[0]} base" if loading.bits in (4, 8) else "original 16-bit base"
    print(f"merged {args.adapter} into the {base} of {args.base_model} ({args.dtype}) -> {args.output}")
    if trained := read_template_record(args.adapter):
        print(f"chat template of the saved tokenizer: {trained['name']} (as trained)")
    if gguf_type:
        path = os.path.join(args.output, GGUF_FILE)
        print(f"GGUF ({gguf_type}) -> {path}: {gguf_summary(path)}")
    return 0


def console_main():
    """The ``qlora-merge-adapter`` command."""
    return run_main(main)
