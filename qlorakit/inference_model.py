"""The model the inference commands use (generate, chat, evaluate, merge): the base rebuilt as
the adapter's base_loading.json says (flags on top), with a warning first when it is not the base
the adapter was trained on, and the adapter loaded on it.
"""

import logging
import os

import torch

from .adapter_paths import check_adapter
from .base_loading import (BASE_LOADING_FILE, base_difference, check_model_weights, config_fields, read_base_loading,
                           resolve_base_loading, trained_base)
from .base_model import load_base_weights, load_model_config, model_task, resolve_device_map
from .errors import ModelError
from .lora import adapter_tokenizer, load_adapter, note_other_model_class, read_adapter_config
from .tokenizer import load_tokenizer, resize_embeddings_for

logger = logging.getLogger(__name__)


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


def load_inference_tokenizer(model_name_or_path, adapter=None, trust_remote_code=False, config=None):
    """The left-padding tokenizer inference prompts with: an adapter that trains added tokens brings
    the tokenizer that holds them, else the base's. The commands load it first, so that a prompt
    template or --tools it cannot take is refused before the weights load."""
    kwargs = {"trust_remote_code": trust_remote_code}
    if adapter:
        check_adapter(adapter)
    tokenizer = adapter_tokenizer(adapter, read_adapter_config(adapter), padding_side="left", **kwargs) if adapter else None
    if tokenizer is not None:
        return tokenizer
    config = config or load_model_config(model_name_or_path, **kwargs)
    return load_tokenizer(model_name_or_path, padding_side="left", config=config, **kwargs)


def load_base_for_inference(model_name_or_path, loading, trust_remote_code=False, adapter=None, tokenizer=None):
    """(base model, left-padding tokenizer) loaded as `loading` says, embeddings resized to the tokenizer.
    adapter: the adapter that will go on it, to warn first when this base is not the one it was trained on.
    tokenizer: load_inference_tokenizer's, when the caller loaded it already."""
    kwargs = {"trust_remote_code": trust_remote_code}
    config = load_model_config(model_name_or_path, **kwargs)
    task = model_task(config, model_name_or_path)
    check_model_weights(model_name_or_path)
    if adapter:
        warn_if_other_base(adapter, model_name_or_path, config)
    tokenizer = tokenizer or load_inference_tokenizer(model_name_or_path, adapter, trust_remote_code, config)
    dtype = torch.float32 if loading.bits == 32 else getattr(torch, loading.compute_dtype)
    model = load_base_weights(model_name_or_path, task, loading, dtype, device_map=resolve_device_map()[0], **kwargs)
    resize_embeddings_for(tokenizer, model)
    return model, tokenizer


def load_for_inference(model_name_or_path, adapter=None, trust_remote_code=False, tokenizer=None, **overrides):
    """A base model with an optional trained adapter, ready to generate.

    The base is loaded as the adapter's base_loading.json says (the base it was trained against);
    overrides (BaseLoading fields by name, e.g. bits=16 or base_loading.loading_overrides of a
    command line) override it. Without the file (adapters saved before it existed, or no
    adapter) the default is 4-bit NF4 with double quantization and bf16 compute. The tokenizer
    (load_inference_tokenizer's, or the one given) pads on the left so that batched generation
    continues every prompt from its last real token.
    """
    loading, saved = inference_loading(adapter, **overrides)
    model, tokenizer = load_base_for_inference(model_name_or_path, loading, trust_remote_code, adapter, tokenizer)
    if saved:
        note_other_model_class(adapter, saved.model_class, model, model_name_or_path)
    if adapter:
        model = load_adapter(model, adapter)
    model.eval()
    return model, tokenizer
