"""Loading a pretrained base: its config and task (causal or seq2seq), where it goes (device
map), and its weights, quantized as a BaseLoading record says (load_base_weights, under both
training and inference), with one line for a damaged weights file.
"""

import os

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM
from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)

from .base_loading import weight_files
from .checkpoints import safetensors_problem, torch_file_problem
from .errors import ModelError
from .launcher import local_rank, world_size
from .layers import keep_4bit_weights_unpacked
from .quantization import build_quantization_config, ensure_quantized

CAUSAL, SEQ2SEQ = "causal", "seq2seq"
AUTO_MODEL_CLASSES = {CAUSAL: AutoModelForCausalLM, SEQ2SEQ: AutoModelForSeq2SeqLM}


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


def load_base_weights(model_name_or_path, task, loading, dtype, quant_storage=torch.uint8, **kwargs):
    """The base's weights loaded as the BaseLoading record `loading` says: the one loader under
    training and inference, so that both build the base a record describes alike. dtype: the
    weights that stay unquantized; quant_storage: see build_quantization_config; kwargs: for
    from_pretrained (device map, hub access, attention kernel)."""
    quantization_config = build_quantization_config(loading, quant_storage)
    model = load_weights(AUTO_MODEL_CLASSES[task], model_name_or_path, quantization_config=quantization_config,
                         dtype=dtype, **kwargs)
    model = ensure_quantized(model, quantization_config, model_name_or_path)
    keep_4bit_weights_unpacked(model)
    return model
