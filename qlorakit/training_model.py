"""The model a training run trains: the base loaded and quantized as qlora.py's flags say (or as a
checkpoint or a starting adapter was trained), frozen, with a fresh or saved LoRA adapter on top.

Loading follows the QLoRA recipe (arXiv 2305.14314, section 3): NF4 base weights with double
quantization, bf16 compute, LoRA on every linear layer, paged AdamW (chosen in the arguments).
"""

import dataclasses
import functools
import logging

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from .base_loading import (BASE_LOADING_FILE, base_loading_conflicts, base_loading_for_flags, base_name,
                           config_fields, read_base_loading, resolve_base_loading, trained_settings)
from .base_model import CAUSAL, hub_kwargs, load_base_weights, resolve_device_map
from .launcher import launched_sharded
from .layers import is_norm_layer
from .errors import ModelError
from .lora import (PEFT_TASK_TYPES, load_adapter, lora_conflicts, lora_target_modules, note_other_model_class,
                   adapter_tokenizer, read_adapter_config, save_adapter, trainable_token_layers, trained_token_ids)
from .tokenizer import resize_embeddings_for

logger = logging.getLogger(__name__)


def compute_dtype_for(bf16, fp16):
    """The dtype training computes in: --bf16's or --fp16's, else float32."""
    if bf16:
        return torch.bfloat16
    if fp16:
        return torch.float16
    return torch.float32


def sharded_training(fsdp, deepspeed):
    """FSDP or DeepSpeed (ZeRO-3) shards the model itself: no device_map, 4-bit storage in bf16.
    fsdp, deepspeed: the Trainer's settings of those names (or an accelerate launch that sets them)."""
    return bool(fsdp or deepspeed or launched_sharded())


def base_loading_for_training(args, model_class=None):
    """How the flags (RunArguments) load the base: the record saved beside every adapter."""
    compute_dtype = compute_dtype_for(args.training.bf16, args.training.fp16)
    return base_loading_for_flags(args.quantization, compute_dtype, model_class)


def weights_dtype_for_training(compute_dtype):
    """The dtype the unquantized weights are loaded in: bf16 for bf16 training; fp16 training keeps
    master weights in fp32 (the Trainer's grad scaler needs them)."""
    return torch.bfloat16 if compute_dtype == "bfloat16" else torch.float32


def load_base_model(args, task=CAUSAL, loading=None, sharded=False):
    """The base as the flags ask, or as `loading` (a checkpoint's saved record) says."""
    model_args = args.model
    loading = loading or base_loading_for_training(args)
    device_map, max_memory = resolve_device_map(model_args.max_memory_MB)
    load_dtype = weights_dtype_for_training(loading.compute_dtype)
    quant_storage = torch.uint8
    if sharded:
        device_map, max_memory, quant_storage = None, None, load_dtype
    return load_base_weights(model_args.model_name_or_path, task, loading, load_dtype, quant_storage,
                             device_map=device_map, max_memory=max_memory,
                             attn_implementation=model_args.attn_implementation, **hub_kwargs(model_args))


def prepare_base_for_training(model, activation_checkpointing=False, activation_checkpointing_kwargs=None):
    """Freeze the base and set up activation checkpointing.

    peft's prepare_model_for_kbit_training would also upcast embeddings, head and norms to fp32,
    a transient ~1 GB for a 7B model that cast_for_training undoes for the embeddings and head
    anyway; here nothing is copied.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    if activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs)
        model.enable_input_require_grads()


def attach_lora(model, args, task=CAUSAL, sharded=False, adapter_dir=None, record=None, template=None,
                compared_flags=None, tokenizer=None, new_token_ids=()):
    """Wrap a frozen base with a LoRA adapter: a fresh one, or the saved one of adapter_dir as it
    was trained (its own rank, alpha, dropout and targets; contradicting flags are reported as
    ignored). compared_flags: the LoRA flags to compare with the saved adapter (None: all).
    new_token_ids: the ids of --new_tokens in `tokenizer`; only their embedding (and head) rows
    train, and every saved adapter carries the tokenizer that names them."""
    lora_args = args.lora
    prepare_base_for_training(model, args.training.activation_checkpointing,
                              args.training.activation_checkpointing_kwargs)
    targets = lora_target_modules(model, lora_args.lora_modules)
    if adapter_dir:
        adapter_config = read_adapter_config(adapter_dir)
        conflicts = lora_conflicts(adapter_config, lora_args, targets, compared_flags)
        if conflicts:
            logger.warning("%s was trained with %s; using the saved adapter's settings, these flags are ignored",
                           adapter_dir, ", ".join(conflicts))
        check_adapter_tokens(adapter_dir, adapter_config, tokenizer, new_token_ids)
        model = load_adapter(model, adapter_dir, is_trainable=True, autocast_adapter_dtype=False)
    else:
        token_layers = (trainable_token_layers(model, new_token_ids, lora_args.new_tokens_in_head, targets)
                        if new_token_ids else None)
        config = LoraConfig(r=lora_args.lora_r, lora_alpha=lora_args.lora_alpha, target_modules=targets,
                            lora_dropout=lora_args.lora_dropout, bias="none", task_type=PEFT_TASK_TYPES[task],
                            trainable_token_indices=token_layers)
        model = get_peft_model(model, config)
    cast_for_training(model, args.training.bf16, norms_in_fp32=args.quantization.norms_in_fp32 and not sharded)
    record = record or base_loading_for_training(args, type(model.get_base_model()).__name__)
    model.save_pretrained = functools.partial(save_adapter, model.save_pretrained, record, template=template,
                                              tokenizer=tokenizer if new_token_ids else None)
    return model


def check_adapter_tokens(adapter_dir, adapter_config, tokenizer, new_token_ids):
    """An adapter that trains the rows of added tokens goes on only with the same tokens at the same
    ids (rows of other tokens would be read as its own), and one without them cannot take new ones.
    adapter_config: the adapter's peft config (lora.read_adapter_config)."""
    saved_ids, new_token_ids = trained_token_ids(adapter_config), sorted(new_token_ids)
    if not saved_ids and not new_token_ids:
        return
    saved_tokenizer = adapter_tokenizer(adapter_dir, adapter_config)
    saved = saved_tokenizer.convert_ids_to_tokens(saved_ids) if saved_tokenizer else []
    current = tokenizer.convert_ids_to_tokens(new_token_ids)
    if saved_ids != new_token_ids or saved != current:
        trained = f"--new_tokens {','.join(saved)}" if saved else "no --new_tokens"
        given = f"--new_tokens {','.join(current)}" if current else "none"
        raise ModelError(f"{adapter_dir} was trained with {trained}; this run has {given}: pass the ones it was "
                         "trained with (tokens are added to a fresh adapter only)")


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
    """The base under a checkpoint of this run: its saved loading (the trained_settings: bits, quant
    type, double quant) wins over the flags, with a warning when they differ (the settings check
    let the change pass)."""
    loading = base_loading_for_training(args)
    saved = read_base_loading(adapter_dir) if adapter_dir else None
    if saved:
        conflicts = base_loading_conflicts(saved, loading)
        if conflicts:
            logger.warning("%s was trained on a base loaded with %s; loading it that way", adapter_dir,
                           ", ".join(conflicts))
        loading = dataclasses.replace(loading, **{name: getattr(saved, name) for name in trained_settings()})
    return loading


def starting_adapter_base_loading(args, adapter):
    """The base under an adapter that training starts from, as inference rebuilds it: its saved
    loading, with the quantization flags the user gave on top (named in one line where they differ);
    without a record, the flags with a one-line notice. The compute dtype follows --bf16/--fp16."""
    flags = base_loading_for_training(args)
    given = {name: getattr(flags, name) for name in trained_settings() if name in args.given}
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


def load_model(args, tokenizer, task=CAUSAL, adapter_dir=None, template=None, adapter_starts_run=False,
               new_token_ids=()):
    """The base (quantized as asked) plus a LoRA adapter, or the whole model for --full_finetune.

    adapter_dir: the adapter to train on or evaluate; a checkpoint's of this run (resume,
    evaluation) unless adapter_starts_run. A checkpoint is loaded as it was trained: its base
    loading and LoRA settings win over every flag, differences are reported.
    adapter_starts_run: adapter_dir is an adapter this run starts from (--adapter_name_or_path).
    Its LoRA settings win over the flags too, but only the flags the user gave are reported as
    ignored, and quantization flags the user gave win over its base loading.
    template: the record of the prompt template trained with, saved beside every adapter.
    new_token_ids: the ids of the tokens --new_tokens added to the tokenizer (their rows train).
    """
    sharded = sharded_training(args.training.fsdp, args.training.deepspeed)
    if adapter_starts_run:
        loading = starting_adapter_base_loading(args, adapter_dir)
        logger.info("training on from the adapter %s (base: %s)", adapter_dir, loading.describe())
    else:
        loading = checkpoint_base_loading(args, adapter_dir)
    model = load_base_model(args, task, loading, sharded)
    base_config = config_fields(model.config)  # before the embeddings grow: as the base's config.json says
    resize_embeddings_for(tokenizer, model)
    model.config.dtype = getattr(torch, loading.compute_dtype)
    if args.lora.full_finetune:
        return model
    note_other_model_class(adapter_dir, loading.model_class, model, args.model.model_name_or_path)
    record = dataclasses.replace(loading, model_class=type(model).__name__,
                                 base_model=base_name(args.model.model_name_or_path), base_config=base_config)
    compared_flags = args.given if adapter_starts_run else None
    return attach_lora(model, args, task, sharded, adapter_dir, record, template, compared_flags, tokenizer,
                       new_token_ids)
