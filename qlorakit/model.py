"""Model loading: the 4-bit base, the tokenizer fixes and the LoRA adapter.

The only module that imports bitsandbytes and peft. Loading follows the QLoRA recipe
(arXiv 2305.14314, section 3): NF4 base weights with double quantization, bf16 compute, LoRA on
every linear layer, paged AdamW (chosen in the arguments).
"""

import functools
import os

import bitsandbytes as bnb
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

DEFAULT_PAD_TOKEN = "[PAD]"
LINEAR_TYPES = (torch.nn.Linear, bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)


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


def world_size():
    return int(os.environ.get("WORLD_SIZE", 1))


def sharded_training(training_args):
    """FSDP or DeepSpeed (ZeRO-3) shards the model itself: no device_map, 4-bit storage in bf16."""
    launched_sharded = any(os.environ.get(f"ACCELERATE_USE_{name}", "").lower() in ("1", "true")
                           for name in ("FSDP", "DEEPSPEED"))
    return bool(training_args.fsdp or training_args.deepspeed or launched_sharded)


def resolve_device_map(max_memory_MB=None):
    """One full copy per rank under torchrun/accelerate; otherwise spread over the visible GPUs.

    device_map="auto" splits a model that does not fit one GPU over several, one busy at a time
    (the reference's behaviour); data parallel needs each rank to hold its own copy instead.
    """
    if not torch.cuda.is_available():
        return {"": "cpu"}, None
    if world_size() > 1:
        return {"": int(os.environ.get("LOCAL_RANK", 0))}, None
    max_memory = None
    if max_memory_MB:
        max_memory = {i: f"{max_memory_MB}MB" for i in range(torch.cuda.device_count())}
    return "auto", max_memory


def hub_kwargs(model_args, cache_dir=None):
    """Arguments shared by every from_pretrained call; the token itself never leaves the hub library."""
    return {
        "cache_dir": cache_dir,
        "trust_remote_code": model_args.trust_remote_code,
        "token": True if model_args.use_auth_token else None,
    }


def load_tokenizer(model_name_or_path, padding_side="right", **kwargs):
    """Tokenizer with a pad token and, for LLaMA, the special tokens its checkpoints expect."""
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, padding_side=padding_side, **kwargs)
    config = AutoConfig.from_pretrained(model_name_or_path, **kwargs)
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


def load_base_model(model_args, training_args, sharded=False):
    compute_dtype = compute_dtype_for(training_args)
    device_map, max_memory = resolve_device_map(training_args.max_memory_MB)
    # fp16 training keeps master weights in fp32 (the Trainer's grad scaler needs them).
    load_dtype = torch.bfloat16 if training_args.bf16 else torch.float32
    quant_storage = torch.uint8
    if sharded:
        device_map, max_memory, quant_storage = None, None, load_dtype
    return AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        quantization_config=build_quantization_config(
            training_args.bits, training_args.quant_type, training_args.double_quant, compute_dtype, quant_storage
        ),
        device_map=device_map,
        max_memory=max_memory,
        dtype=load_dtype,
        attn_implementation=model_args.attn_implementation,
        **hub_kwargs(model_args, training_args.cache_dir),
    )


def find_linear_module_names(model):
    """Short names of every linear layer, found by type, except the output head."""
    output_head = model.get_output_embeddings()
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, LINEAR_TYPES) and module is not output_head:
            names.add(full_name.split(".")[-1])
    return sorted(names)


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
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=training_args.activation_checkpointing_kwargs)
        model.enable_input_require_grads()


def attach_lora(model, training_args, sharded=False):
    """Wrap a frozen base with a fresh LoRA adapter on the chosen linear layers."""
    prepare_base_for_training(model, training_args)
    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=lora_target_modules(model, training_args.lora_modules),
        lora_dropout=training_args.lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    cast_for_training(model, training_args.bf16, norms_in_fp32=training_args.norms_in_fp32 and not sharded)
    # The only resized rows are the pad token's, rebuilt identically at load time (mean of the
    # base rows); saving both embedding matrices would add ~0.5 GB to every 7B checkpoint.
    model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    return model


def cast_for_training(model, bf16, norms_in_fp32=False):
    """LoRA layers, embeddings and head in bf16 with --bf16; norms in fp32 only when asked.

    The reference upcast the norms for stability, but their fp32 outputs spread fp32 through
    every projection and the residual stream. FSDP and ZeRO-3 flatten parameters into one dtype,
    so sharded runs keep norms in bf16 regardless.
    """
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and bf16:
            module.to(torch.bfloat16)
        if "norm" in name and norms_in_fp32:
            module.to(torch.float32)
        if bf16 and ("lm_head" in name or "embed_tokens" in name):
            if hasattr(module, "weight") and module.weight.dtype == torch.float32:
                module.to(torch.bfloat16)


def load_model(model_args, training_args, tokenizer):
    """The base (quantized as asked) plus a LoRA adapter, or the whole model for --full_finetune."""
    sharded = sharded_training(training_args)
    model = load_base_model(model_args, training_args, sharded)
    resize_embeddings_for(tokenizer, model)
    model.config.dtype = compute_dtype_for(training_args)
    if training_args.full_finetune:
        return model
    return attach_lora(model, training_args, sharded)


def logical_numel(param):
    """Parameters a tensor stands for: a 4-bit tensor packs two weights in each byte."""
    if isinstance(param, bnb.nn.Params4bit):
        return param.numel() * 2
    return param.numel()


def describe_parameters(model):
    """Lines that say what trains and how the weights are stored (dtype -> share of elements)."""
    trainable = sum(logical_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(logical_numel(p) for p in model.parameters())
    lines = [f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"]
    by_dtype = {}
    for param in model.parameters():
        by_dtype[param.dtype] = by_dtype.get(param.dtype, 0) + param.numel()
    stored = sum(by_dtype.values())
    for dtype, count in sorted(by_dtype.items(), key=lambda item: -item[1]):
        lines.append(f"{dtype}: {count:,} stored elements ({100 * count / stored:.1f}%)")
    return lines


def load_for_inference(model_name_or_path, adapter=None, bits=4, compute_dtype=None, trust_remote_code=False):
    """A base model (4-bit by default) with an optional trained adapter, ready to generate.

    The tokenizer pads on the left so that batched generation continues every prompt from its
    last real token.
    """
    compute_dtype = compute_dtype or (torch.bfloat16 if bits in (4, 8) else torch.float32)
    kwargs = {"trust_remote_code": trust_remote_code}
    tokenizer = load_tokenizer(model_name_or_path, padding_side="left", **kwargs)
    device_map, _ = resolve_device_map()
    model = AutoModelForCausalLM.from_pretrained(
        model_name_or_path,
        quantization_config=build_quantization_config(bits, compute_dtype=compute_dtype),
        device_map=device_map,
        dtype=compute_dtype,
        **kwargs,
    )
    resize_embeddings_for(tokenizer, model)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, tokenizer
