"""LoRA adapters with peft: their targets (and the embedding rows of added tokens), a saved
adapter's settings against the flags, saving (with base_loading.json, the prompt template and,
for added tokens, the tokenizer beside it) and loading, with one line for an adapter that is
missing or does not fit its base.
"""

import logging
import re

from peft import PeftConfig, PeftModel
from transformers import AutoTokenizer

from .adapter_paths import check_adapter
from .base_loading import ADAPTER_CONFIG_FILE, write_base_loading
from .base_model import CAUSAL, SEQ2SEQ
from .errors import ModelError
from .layers import find_linear_module_names, short_name
from .trained_template import write_template_record

logger = logging.getLogger(__name__)

PEFT_TASK_TYPES = {CAUSAL: "CAUSAL_LM", SEQ2SEQ: "SEQ_2_SEQ_LM"}
LORA_SETTINGS = (("r", "lora_r"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout"))
# torch's report of a tensor that does not fit the module built for it, as peft passes it on.
SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from "
                           r"checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)")
# The axis of each LoRA matrix that is the rank r: A is (r, in), B is (out, r).
RANK_AXES = {"lora_A": 0, "lora_B": 1, "lora_embedding_A": 0, "lora_embedding_B": 1}


def lora_target_modules(model, lora_modules):
    if lora_modules == "all":
        return find_linear_module_names(model)
    return [name.strip() for name in lora_modules.split(",") if name.strip()]


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


def read_adapter_config(adapter):
    """peft's config of a saved adapter, with one line for one that cannot be read."""
    try:
        return PeftConfig.from_pretrained(adapter)
    except (OSError, ValueError) as error:
        raise ModelError(f"{adapter}: cannot read the adapter config ({str(error).strip().splitlines()[0]})") from error


def save_adapter(save_pretrained, record, save_directory, template=None, tokenizer=None, **kwargs):
    """peft's save plus base_loading.json (and prompt_template.json: `template`, the record of the
    prompt template trained with, when there is one; the tokenizer, when the run added tokens, so
    that inference finds their ids). Resized embedding rows are rebuilt identically at load time
    (mean of the base rows) and only the rows of --new_tokens train, saved by peft on their own;
    saving both embedding matrices would add ~0.5 GB to every 7B checkpoint."""
    save_pretrained(save_directory, save_embedding_layers=False, **kwargs)
    if kwargs.get("is_main_process", True):
        write_base_loading(save_directory, record)
        if template:
            write_template_record(save_directory, template)
        if tokenizer is not None:
            tokenizer.save_pretrained(save_directory)


def trained_token_ids(adapter_config):
    """The token ids whose embedding rows an adapter trains (peft's trainable_token_indices), sorted."""
    indices = getattr(adapter_config, "trainable_token_indices", None) or []
    if isinstance(indices, dict):
        indices = [index for layer in indices.values() for index in layer]
    return sorted(set(indices))


def module_name(model, module):
    return next(name for name, candidate in model.named_modules() if candidate is module)


def trainable_token_layers(model, token_ids, in_head=True, lora_targets=()):
    """peft's trainable_token_indices for new tokens: their rows of the input embeddings and, with
    in_head, of an untied output head (a tied head follows the embeddings in peft). A head that
    LoRA adapts (in lora_targets) already learns to write them through its LoRA update, and peft
    cannot wrap one layer both ways."""
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    layers = {module_name(model, embeddings): list(token_ids)}
    if in_head and head is not None and head.weight is not embeddings.weight:
        name = module_name(model, head)
        if short_name(name) in lora_targets:
            logger.info("new tokens: %s is a LoRA target, whose update covers their rows too", short_name(name))
        else:
            layers[name] = list(token_ids)
    return layers


def adapter_tokenizer(adapter, adapter_config, **kwargs):
    """The tokenizer saved with an adapter that trains the rows of added tokens (only it knows their
    ids), or None for an adapter without them."""
    if not trained_token_ids(adapter_config):
        return None
    try:
        return AutoTokenizer.from_pretrained(adapter, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelError(f"{adapter} trains the rows of added tokens but holds no tokenizer that names them "
                         f"({str(error).strip().splitlines()[0]})") from error


def check_embedding_rows(model, adapter, adapter_config):
    """One line for an adapter that trains token rows the embeddings under it do not have: its
    tokens are missing from the tokenizer the base was resized to."""
    token_ids = trained_token_ids(adapter_config)
    rows = model.get_input_embeddings().weight.shape[0]
    if token_ids and token_ids[-1] >= rows:
        raise ModelError(f"{adapter} trains the rows of added tokens (ids {token_ids[0]}-{token_ids[-1]}) but the "
                         f"base under it has {rows} embedding rows: its tokenizer lacks them (load the tokenizer "
                         "saved beside the adapter, or train with the same --new_tokens)")


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


def load_adapter(model, adapter, **kwargs):
    """PeftModel.from_pretrained, with one line for an adapter that is not there (a hub id that
    does not exist or cannot be reached) or whose weights do not fit (size_mismatch_message)."""
    check_adapter(adapter)
    check_embedding_rows(model, adapter, read_adapter_config(adapter))
    try:
        return PeftModel.from_pretrained(model, adapter, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelError(f"{adapter}: cannot load the adapter ({str(error).strip().splitlines()[0]})") from error
    except RuntimeError as error:
        message = size_mismatch_message(adapter, getattr(model, "name_or_path", "given"), str(error))
        if message is None:
            raise
        raise ModelError(message) from error


def note_other_model_class(adapter, saved_class, model, model_name_or_path):
    """One line when the adapter's record names another model class than the base loaded under it."""
    if saved_class not in (None, type(model).__name__):
        logger.warning("note: %s was trained on a %s base, %s is a %s", adapter, saved_class, model_name_or_path,
                       type(model).__name__)
