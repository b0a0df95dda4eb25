"""Model loading: the 4-bit base, the tokenizer fixes and the LoRA adapter.

The only module that imports bitsandbytes and peft. Loading follows the QLoRA recipe
(arXiv 2305.14314, section 3): NF4 base weights with double quantization, bf16 compute, LoRA on
every linear layer, paged AdamW (chosen in the arguments).
"""

import dataclasses
import functools
import logging
import os
import re

import bitsandbytes as bnb
import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, BitsAndBytesConfig
from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
from transformers.pytorch_utils import Conv1D
from transformers.quantizers.quantizers_utils import should_convert_module

from .base_loading import (ADAPTER_CONFIG_FILE, BASE_LOADING_FILE, BaseLoading, base_difference, base_name,
                           check_adapter, check_model_weights, config_fields, dtype_name, read_base_loading,
                           resolve_base_loading, trained_base, weight_files)
from .checkpoints import safetensors_problem, torch_file_problem
from .errors import ModelError
from .jsonl import write_json_atomic
from .launcher import launched_sharded, local_rank, world_size
from .trained_template import write_template_record

logger = logging.getLogger(__name__)

DEFAULT_PAD_TOKEN = "[PAD]"
CAUSAL, SEQ2SEQ = "causal", "seq2seq"
AUTO_MODEL_CLASSES = {CAUSAL: AutoModelForCausalLM, SEQ2SEQ: AutoModelForSeq2SeqLM}
PEFT_TASK_TYPES = {CAUSAL: "CAUSAL_LM", SEQ2SEQ: "SEQ_2_SEQ_LM"}
QUANTIZED_LINEAR_TYPES = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
# GPT-2 and its relatives use Conv1D, a linear layer with a transposed weight.
LINEAR_TYPES = (torch.nn.Linear, Conv1D, *QUANTIZED_LINEAR_TYPES)
NORM_TYPES = (torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.GroupNorm)
# The linear layers of nn.MultiheadAttention are read as raw weights, never called: keep them.
UNCALLED_LINEAR_TYPES = (torch.nn.modules.linear.NonDynamicallyQuantizableLinear,)
LORA_SETTINGS = (("r", "lora_r"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout"))
# torch's report of a tensor that does not fit the module built for it, as peft passes it on.
SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from "
                           r"checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)")
# The axis of each LoRA matrix that is the rank r: A is (r, in), B is (out, r).
RANK_AXES = {"lora_A": 0, "lora_B": 1, "lora_embedding_A": 0, "lora_embedding_B": 1}
# The base-loading settings that are flags of their own (BaseLoading fields and QuantizationArguments).
QUANTIZATION_SETTINGS = ("bits", "quant_type", "double_quant")


def compute_dtype_for(training_args):
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return torch.float32


def build_quantization_config(bits, quant_type="nf4", double_quant=True, compute_dtype=torch.float32,
                              quant_storage=torch.uint8):
    """BitsAndBytesConfig for 4 or 8 bits; None for 16/32-bit (plain LoRA or full finetuning).

    quant_storage: the dtype that packs the 4-bit weights. FSDP and ZeRO-3 shard flat tensors of
    one dtype, so sharded training stores them in the compute dtype (bf16) instead of uint8.
    """
    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_quant_storage=quant_storage,
        )
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def sharded_training(training_args):
    """FSDP or DeepSpeed (ZeRO-3) shards the model itself: no device_map, 4-bit storage in bf16."""
    return bool(training_args.fsdp or training_args.deepspeed or launched_sharded())


def resolve_device_map(max_memory_MB=None):
    """One full copy per rank under torchrun/accelerate; otherwise spread over the visible GPUs.

    device_map="auto" splits a model that does not fit one GPU over several, one busy at a time
    (the reference's behaviour); data parallel needs each rank to hold its own copy instead.
    """
    if not torch.cuda.is_available():
        return {"": "cpu"}, None
    if world_size() > 1:
        return {"": local_rank()}, None
    max_memory = None
    if max_memory_MB:
        max_memory = {i: f"{max_memory_MB}MB" for i in range(torch.cuda.device_count())}
    return "auto", max_memory


def hub_kwargs(model_args):
    """Arguments shared by every from_pretrained call; the token itself never leaves the hub library."""
    return {
        "cache_dir": model_args.cache_dir,
        "trust_remote_code": model_args.trust_remote_code,
        "token": True if model_args.use_auth_token else None,
    }


def model_task(config, name):
    """'causal' or 'seq2seq', from the config alone (before any weight is read).

    Encoder-decoder configs go to the seq2seq class even when their type also has a decoder-only
    variant (BART's BartForCausalLM would silently drop the encoder).
    """
    auto_map = getattr(config, "auto_map", None) or {}
    seq2seq = config.model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES or "AutoModelForSeq2SeqLM" in auto_map
    causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in auto_map
    if seq2seq and (config.is_encoder_decoder or not causal):
        return SEQ2SEQ
    if causal:
        return CAUSAL
    raise ModelError(f"{name}: model type {config.model_type!r} is neither a causal nor a seq2seq language model; "
                     "qlora.py trains those two kinds")


def load_model_config(model_name_or_path, **kwargs):
    try:
        return AutoConfig.from_pretrained(model_name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelError(f"{model_name_or_path}: cannot read the model config ({str(error).splitlines()[0]})") from error


def load_tokenizer(model_name_or_path, padding_side="right", config=None, **kwargs):
    """Tokenizer with a pad token and, for LLaMA, the special tokens its checkpoints expect.
    config: the model's config when the caller has read it already."""
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, padding_side=padding_side, **kwargs)
    config = config or AutoConfig.from_pretrained(model_name_or_path, **kwargs)
    if config.model_type == "llama":
        align_special_tokens(tokenizer, config)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": DEFAULT_PAD_TOKEN})
    return tokenizer


def align_special_tokens(tokenizer, config):
    """Make bos/eos follow the model config: early LLaMA conversions shipped wrong ones (bos must be 1)."""
    for name in ("bos", "eos"):
        token_id = getattr(config, f"{name}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))


def resize_embeddings_for(tokenizer, model):
    """Grow the embeddings to the tokenizer; new rows start at the mean of the old ones.

    The mean keeps a new token's logits ordinary instead of random, which matters only for the
    pad row here (it is masked), but keeps added tokens from derailing the first steps.
    """
    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old_rows:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
        if embedding is None:
            continue
        weight = embedding.weight.data
        weight[old_rows:] = weight[:old_rows].mean(dim=0, keepdim=True)


def base_loading_for_training(args, model_class=None):
    """How the flags (RunArguments) load the base: the record saved beside every adapter."""
    quantization = args.quantization
    return BaseLoading(quantization.bits, quantization.quant_type, quantization.double_quant,
                       dtype_name(compute_dtype_for(args.training)), model_class)


def load_base_model(args, task=CAUSAL, loading=None, sharded=False):
    """The base as the flags ask, or as `loading` (a checkpoint's saved record) says."""
    model_args = args.model
    loading = loading or base_loading_for_training(args)
    compute_dtype = compute_dtype_for(args.training)
    device_map, max_memory = resolve_device_map(model_args.max_memory_MB)
    # fp16 training keeps master weights in fp32 (the Trainer's grad scaler needs them).
    load_dtype = torch.bfloat16 if args.training.bf16 else torch.float32
    quant_storage = torch.uint8
    if sharded:
        device_map, max_memory, quant_storage = None, None, load_dtype
    quantization_config = build_quantization_config(
        loading.bits, loading.quant_type, loading.double_quant, compute_dtype, quant_storage)
    model = load_weights(
        AUTO_MODEL_CLASSES[task], model_args.model_name_or_path,
        quantization_config=quantization_config,
        device_map=device_map,
        max_memory=max_memory,
        dtype=load_dtype,
        attn_implementation=model_args.attn_implementation,
        **hub_kwargs(model_args),
    )
    return ensure_quantized(model, quantization_config, model_args.model_name_or_path)


def damaged_weight_files(folder):
    """'path: problem' for each weights file of a local model folder that a loader cannot read."""
    damaged = []
    for path in weight_files(folder):
        problem = safetensors_problem(path) if path.endswith(".safetensors") else torch_file_problem(path)
        if problem:
            damaged.append(f"{path}: {problem}")
    return damaged


def load_weights(model_class, model_name_or_path, **kwargs):
    """model_class.from_pretrained; when a local folder fails to load, one line (a ModelError) that
    names the damaged weights file (truncated, torn header), or the folder and the loader's first
    line for a file it cannot read. Other failures keep their traceback: they are bugs, not input."""
    try:
        return model_class.from_pretrained(model_name_or_path, **kwargs)
    except Exception as error:
        folder = os.path.expanduser(model_name_or_path)
        if not os.path.isdir(folder):
            raise
        if damaged := damaged_weight_files(folder):
            raise ModelError(f"cannot load the model weights of {model_name_or_path}: {'; '.join(damaged)}") from error
        if isinstance(error, (OSError, ValueError, SafetensorError)):
            raise ModelError(f"{model_name_or_path}: cannot load the model ({str(error).strip().splitlines()[0]})") \
                from error
        raise


def quantized_copy(linear, quantization_config):
    """A bitsandbytes layer computing `linear`'s map with its weights quantized as configured."""
    config, weight = quantization_config, linear.weight.data
    has_bias = linear.bias is not None
    if config.load_in_4bit:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, has_bias, config.bnb_4bit_compute_dtype,
                                  compress_statistics=config.bnb_4bit_use_double_quant,
                                  quant_type=config.bnb_4bit_quant_type, quant_storage=config.bnb_4bit_quant_storage,
                                  device="meta")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=config.bnb_4bit_use_double_quant,
                                         quant_type=config.bnb_4bit_quant_type,
                                         quant_storage=config.bnb_4bit_quant_storage, module=layer)
    else:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, has_bias,
                                    has_fp16_weights=config.llm_int8_has_fp16_weight,
                                    threshold=config.llm_int8_threshold, device="meta")
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=config.llm_int8_has_fp16_weight)
    if has_bias:
        layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    layer.source_cls = type(linear)
    return layer.to(weight.device)  # bitsandbytes quantizes on the move to a real device


def skipped_linear_layers(model, modules_to_not_convert):
    """Linear layers transformers left unquantized only because their class subclasses nn.Linear.

    Its bitsandbytes integration converts exactly nn.Linear and Conv1D, so Falcon's FalconLinear
    (the same map with its own forward) stays 16-bit. The head and the modules the quantizer keeps
    on purpose (T5's fp32 `wo`) are not skipped layers.
    """
    head = model.get_output_embeddings()
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and type(module) is not torch.nn.Linear
            and not isinstance(module, (*QUANTIZED_LINEAR_TYPES, *UNCALLED_LINEAR_TYPES))
            and module is not head and should_convert_module(name, modules_to_not_convert)]


def ensure_quantized(model, quantization_config, name):
    """Quantize the linear layers the loader skipped; refuse a "4-bit" model with no 4-bit layer."""
    if quantization_config is None:
        return model
    for layer_name in skipped_linear_layers(model, model.hf_quantizer.modules_to_not_convert):
        model.set_submodule(layer_name, quantized_copy(model.get_submodule(layer_name), quantization_config))
    quantized, _, _ = count_linear_layers(model)
    if not quantized:
        bits = 4 if quantization_config.load_in_4bit else 8
        raise ModelError(f"{name}: no linear layer of {type(model).__name__} could be quantized to {bits} bits; "
                         "train it with --bits 16")
    return model


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


def short_name(full_name):
    """The layer's own name: 'q_proj' for 'model.layers.0.self_attn.q_proj(.base_layer)'."""
    return full_name.removesuffix(".base_layer").split(".")[-1]


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


def lora_target_modules(model, lora_modules):
    if lora_modules == "all":
        return find_linear_module_names(model)
    return [name.strip() for name in lora_modules.split(",") if name.strip()]


def prepare_base_for_training(model, training_args):
    """Freeze the base and set up activation checkpointing.

    peft's prepare_model_for_kbit_training would also upcast embeddings, head and norms to fp32,
    a transient ~1 GB for a 7B model that cast_for_training undoes for the embeddings and head
    anyway; here nothing is copied.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    if training_args.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=training_args.activation_checkpointing_kwargs)
        model.enable_input_require_grads()


def lora_conflicts(saved, lora_args, targets, compared=None):
    """'flag=saved (flags: value)' for each LoRA setting where the flags disagree with a saved adapter.
    compared: the flag names to compare (None: all of them)."""
    conflicts = [f"{flag}={getattr(saved, key)} (flags: {getattr(lora_args, flag)})"
                 for key, flag in LORA_SETTINGS if (compared is None or flag in compared)
                 and getattr(saved, key) != getattr(lora_args, flag)]
    saved_targets = [saved.target_modules] if isinstance(saved.target_modules, str) else sorted(saved.target_modules)
    if (compared is None or "lora_modules" in compared) and saved_targets != sorted(targets):
        conflicts.append(f"targets={','.join(saved_targets)} (flags: {','.join(sorted(targets))})")
    return conflicts


def base_loading_conflicts(saved, flags):
    return [f"{field}={getattr(saved, field)} (flags: {getattr(flags, field)})"
            for field in QUANTIZATION_SETTINGS if getattr(saved, field) != getattr(flags, field)]


def save_adapter(save_pretrained, record, save_directory, template=None, **kwargs):
    """peft's save plus base_loading.json (and prompt_template.json: `template`, the record of the
    prompt template trained with, when there is one). The only resized embedding rows are the pad token's,
    rebuilt identically at load time (mean of the base rows); saving both embedding matrices would
    add ~0.5 GB to every 7B checkpoint."""
    save_pretrained(save_directory, save_embedding_layers=False, **kwargs)
    if kwargs.get("is_main_process", True):
        write_json_atomic(os.path.join(save_directory, BASE_LOADING_FILE), dataclasses.asdict(record))
        if template:
            write_template_record(save_directory, template)


def read_adapter_config(adapter):
    """peft's config of a saved adapter, with one line for one that cannot be read."""
    try:
        return PeftConfig.from_pretrained(adapter)
    except (OSError, ValueError) as error:
        raise ModelError(f"{adapter}: cannot read the adapter config ({str(error).strip().splitlines()[0]})") from error


def attach_lora(model, args, task=CAUSAL, sharded=False, adapter_dir=None, record=None, template=None,
                compared_flags=None):
    """Wrap a frozen base with a LoRA adapter: a fresh one, or the saved one of adapter_dir as it
    was trained (its own rank, alpha, dropout and targets; contradicting flags are reported as
    ignored). compared_flags: the LoRA flags to compare with the saved adapter (None: all)."""
    lora_args = args.lora
    prepare_base_for_training(model, args.training)
    targets = lora_target_modules(model, lora_args.lora_modules)
    if adapter_dir:
        conflicts = lora_conflicts(read_adapter_config(adapter_dir), lora_args, targets, compared_flags)
        if conflicts:
            logger.warning("%s was trained with %s; using the saved adapter's settings, these flags are ignored",
                           adapter_dir, ", ".join(conflicts))
        model = load_adapter(model, adapter_dir, is_trainable=True, autocast_adapter_dtype=False)
    else:
        config = LoraConfig(r=lora_args.lora_r, lora_alpha=lora_args.lora_alpha, target_modules=targets,
                            lora_dropout=lora_args.lora_dropout, bias="none", task_type=PEFT_TASK_TYPES[task])
        model = get_peft_model(model, config)
    cast_for_training(model, args.training.bf16, norms_in_fp32=args.quantization.norms_in_fp32 and not sharded)
    record = record or base_loading_for_training(args, type(model.get_base_model()).__name__)
    model.save_pretrained = functools.partial(save_adapter, model.save_pretrained, record, template=template)
    return model


def is_norm_layer(module):
    """LayerNorm, RMSNorm and the architectures' own norm classes (LlamaRMSNorm, T5LayerNorm, ...)."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


def cast_for_training(model, bf16, norms_in_fp32=False):
    """LoRA layers, embeddings and head in bf16 with --bf16; norms in fp32 only when asked.

    The reference upcast the norms for stability, but their fp32 outputs spread fp32 through
    every projection and the residual stream. FSDP and ZeRO-3 flatten parameters into one dtype,
    so sharded runs keep norms in bf16 regardless.
    """
    embeddings = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    for module in model.modules():
        if isinstance(module, LoraLayer) and bf16:
            module.to(torch.bfloat16)
        if norms_in_fp32 and is_norm_layer(module):
            module.to(torch.float32)
        if bf16 and id(module) in embeddings and module.weight.dtype == torch.float32:
            module.to(torch.bfloat16)


def checkpoint_base_loading(args, adapter_dir):
    """The base under a checkpoint of this run: its saved loading (bits, quant type, double quant)
    wins over the flags, with a warning when they differ (the settings check let the change pass)."""
    loading = base_loading_for_training(args)
    saved = read_base_loading(adapter_dir) if adapter_dir else None
    if saved:
        conflicts = base_loading_conflicts(saved, loading)
        if conflicts:
            logger.warning("%s was trained on a base loaded with %s; loading it that way", adapter_dir,
                           ", ".join(conflicts))
        loading = dataclasses.replace(loading, bits=saved.bits, quant_type=saved.quant_type,
                                      double_quant=saved.double_quant)
    return loading


def starting_adapter_base_loading(args, adapter):
    """The base under an adapter that training starts from, as inference rebuilds it: its saved
    loading, with the quantization flags the user gave on top (named in one line where they differ);
    without a record, the flags with a one-line notice. The compute dtype follows --bf16/--fp16."""
    flags = base_loading_for_training(args)
    given = {name: getattr(flags, name) for name in QUANTIZATION_SETTINGS if name in args.given}
    saved = read_base_loading(adapter)
    if saved is None:
        logger.warning("note: %s has no %s; loading the base as the flags say (%s)", adapter, BASE_LOADING_FILE,
                       flags.describe())
        return flags
    overridden = base_loading_conflicts(saved, dataclasses.replace(saved, **given))
    if overridden:
        logger.warning("%s was trained on a base loaded with %s; loading it as the flags say", adapter,
                       ", ".join(overridden))
    return resolve_base_loading(saved, compute_dtype=flags.compute_dtype, **given)


def load_model(args, tokenizer, task=CAUSAL, adapter_dir=None, template=None, adapter_starts_run=False):
    """The base (quantized as asked) plus a LoRA adapter, or the whole model for --full_finetune.

    adapter_dir: the adapter to train on or evaluate; a checkpoint's of this run (resume,
    evaluation) unless adapter_starts_run. A checkpoint is loaded as it was trained: its base
    loading and LoRA settings win over every flag, differences are reported.
    adapter_starts_run: adapter_dir is an adapter this run starts from (--adapter_name_or_path).
    Its LoRA settings win over the flags too, but only the flags the user gave are reported as
    ignored, and quantization flags the user gave win over its base loading.
    template: the record of the prompt template trained with, saved beside every adapter.
    """
    sharded = sharded_training(args.training)
    if adapter_starts_run:
        loading = starting_adapter_base_loading(args, adapter_dir)
        logger.info("training on from the adapter %s (base: %s)", adapter_dir, loading.describe())
    else:
        loading = checkpoint_base_loading(args, adapter_dir)
    model = load_base_model(args, task, loading, sharded)
    base_config = config_fields(model.config)  # before the embeddings grow: as the base's config.json says
    resize_embeddings_for(tokenizer, model)
    model.config.dtype = compute_dtype_for(args.training)
    if args.lora.full_finetune:
        return model
    note_other_model_class(adapter_dir, loading.model_class, model, args.model.model_name_or_path)
    record = dataclasses.replace(loading, model_class=type(model).__name__,
                                 base_model=base_name(args.model.model_name_or_path), base_config=base_config)
    compared_flags = args.given if adapter_starts_run else None
    return attach_lora(model, args, task, sharded, adapter_dir, record, template, compared_flags)


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


def size_mismatch_message(adapter, base, error_text):
    """One line for the size mismatch peft reports when an adapter's weights do not fit the layers
    built for them, or None for any other error. Where the rank differs, the weights disagree with
    the adapter's own adapter_config.json (its r edited, or the weights of another run); elsewhere
    the base's layers are not the ones it was trained on.
    """
    mismatches = SIZE_MISMATCH.findall(error_text)
    if not mismatches:
        return None
    name, saved, expected = mismatches[0]
    saved_shape, expected_shape = ([int(size) for size in shape.split(",")] for shape in (saved, expected))
    detail = f"size mismatch for {name.removeprefix('base_model.model.')}: [{saved}] saved, [{expected}] expected"
    more = f"; {len(mismatches) - 1} more tensors alike" if len(mismatches) > 1 else ""
    axis = next((axis for kind, axis in RANK_AXES.items() if f".{kind}." in name), None)
    if axis is not None and saved_shape[axis] != expected_shape[axis]:
        return (f"{adapter}: its weights do not match its {ADAPTER_CONFIG_FILE} ({detail}, rank {saved_shape[axis]} "
                f"in the weights, r {expected_shape[axis]} in the config{more})")
    return f"{adapter}: its weights do not fit the base {base} ({detail}{more}): it was trained on another base"


def note_other_model_class(adapter, saved_class, model, model_name_or_path):
    """One line when the adapter's record names another model class than the base loaded under it."""
    if saved_class not in (None, type(model).__name__):
        logger.warning("note: %s was trained on a %s base, %s is a %s", adapter, saved_class, model_name_or_path,
                       type(model).__name__)


def load_adapter(model, adapter, **kwargs):
    """PeftModel.from_pretrained, with one line for an adapter that is not there (a hub id that
    does not exist or cannot be reached) or whose weights do not fit (size_mismatch_message)."""
    check_adapter(adapter)
    try:
        return PeftModel.from_pretrained(model, adapter, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelError(f"{adapter}: cannot load the adapter ({str(error).strip().splitlines()[0]})") from error
    except RuntimeError as error:
        message = size_mismatch_message(adapter, getattr(model, "name_or_path", "given"), str(error))
        if message is None:
            raise
        raise ModelError(message) from error


def inference_loading(adapter=None, **overrides):
    """(how to load the base, the adapter's saved record or None): the record of the adapter with
    explicit values on top; without a record, the default with a one-line notice."""
    if adapter:
        check_adapter(adapter)
    saved = read_base_loading(adapter) if adapter else None
    loading = resolve_base_loading(saved, **overrides)
    if adapter and saved is None:
        logger.warning("note: %s has no %s; loading the base as %s", adapter, BASE_LOADING_FILE, loading.describe())
    return loading, saved


def local_config_fields(model_name_or_path):
    """config_fields of a local model folder's config, or None for a hub id or an unreadable config."""
    if not os.path.isdir(os.path.expanduser(model_name_or_path)):
        return None
    try:
        return config_fields(load_model_config(model_name_or_path))
    except ModelError:
        return None


def warn_if_other_base(adapter, model_name_or_path, config):
    """One warning line when model_name_or_path (its config read as `config`) is not the base the
    adapter was trained on; base_difference says when that can be told. Said before the weights
    load; if the shapes do not fit either, load_adapter refuses in one line afterwards."""
    trained = trained_base(adapter)
    if trained is None:
        return
    name, trained_config = trained
    reason = base_difference(name, trained_config or local_config_fields(name), model_name_or_path,
                             config_fields(config))
    if reason:
        logger.warning("warning: %s was trained on the base %s, not on %s (%s)", adapter, name, model_name_or_path,
                       reason)


def load_base_for_inference(model_name_or_path, loading, trust_remote_code=False, adapter=None):
    """(base model, left-padding tokenizer) loaded as `loading` says, embeddings resized to the tokenizer.
    adapter: the adapter that will go on it, to warn first when this base is not the one it was trained on."""
    kwargs = {"trust_remote_code": trust_remote_code}
    config = load_model_config(model_name_or_path, **kwargs)
    task = model_task(config, model_name_or_path)
    check_model_weights(model_name_or_path)
    if adapter:
        warn_if_other_base(adapter, model_name_or_path, config)
    tokenizer = load_tokenizer(model_name_or_path, padding_side="left", config=config, **kwargs)
    compute_dtype = getattr(torch, loading.compute_dtype)
    quantization_config = build_quantization_config(loading.bits, loading.quant_type, loading.double_quant, compute_dtype)
    model = load_weights(
        AUTO_MODEL_CLASSES[task], model_name_or_path,
        quantization_config=quantization_config,
        device_map=resolve_device_map()[0],
        dtype=torch.float32 if loading.bits == 32 else compute_dtype,
        **kwargs,
    )
    model = ensure_quantized(model, quantization_config, model_name_or_path)
    resize_embeddings_for(tokenizer, model)
    return model, tokenizer


def load_for_inference(model_name_or_path, adapter=None, bits=None, compute_dtype=None, trust_remote_code=False,
                       quant_type=None, double_quant=None):
    """A base model with an optional trained adapter, ready to generate.

    The base is loaded as the adapter's base_loading.json says (the base it was trained against);
    explicit arguments override it. Without the file (adapters saved before it existed, or no
    adapter) the default is 4-bit NF4 with double quantization and bf16 compute. The tokenizer
    pads on the left so that batched generation continues every prompt from its last real token.
    """
    loading, saved = inference_loading(adapter, bits=bits, quant_type=quant_type, double_quant=double_quant,
                                       compute_dtype=compute_dtype)
    model, tokenizer = load_base_for_inference(model_name_or_path, loading, trust_remote_code, adapter)
    if saved:
        note_other_model_class(adapter, saved.model_class, model, model_name_or_path)
    if adapter:
        model = load_adapter(model, adapter)
    model.eval()
    return model, tokenizer


def dequantize_base(model, dtype):
    """The quantized base with its weights dequantized into plain layers of `dtype`.

    transformers turns every quantized layer back into nn.Linear; GPT-2-style layers were Conv1D
    (weight stored transposed) and go back to Conv1D, so the saved model loads as its own class.
    """
    conv1d = [name for name, module in model.named_modules()
              if isinstance(module, QUANTIZED_LINEAR_TYPES) and getattr(module, "source_cls", None) is Conv1D]
    model = model.dequantize(dtype=dtype)
    for name in conv1d:
        linear = model.get_submodule(name)
        layer = Conv1D(linear.out_features, linear.in_features)
        layer.weight = torch.nn.Parameter(linear.weight.data.T.contiguous(), requires_grad=False)
        layer.bias = linear.bias
        model.set_submodule(name, layer.to(linear.weight.device))
    return model
