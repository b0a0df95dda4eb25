"""Which base is under an adapter and how it was loaded, saved beside the adapter and read back by inference.

An adapter learns to correct one particular quantization of one particular base: generating,
chatting, evaluating or merging against another (NF4 instead of the FP4 it was trained on, or
another model) changes its outputs. qlora.py writes ``base_loading.json`` into every
``adapter_model/``; every inference path rebuilds that base unless a flag says otherwise, and warns
when it is given another model. Also here: the check that a local model folder holds weights at all.
Light on purpose (no torch import), so that command lines can parse their flags before anything
heavy loads.
"""

import dataclasses
import glob
import json
import os
import re

from .errors import ModelError
from .jsonl import read_json_object, write_json_atomic

BASE_LOADING_FILE = "base_loading.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's
MODEL_CONFIG_FILE = "config.json"
WEIGHT_FILE_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# Config fields that tell two bases apart without reading a weight; transformers' attribute maps
# give them one spelling across architectures (GPT-2's n_embd is its hidden_size).
IDENTITY_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
# A hub download's folder in the cache: .../models--ORG--NAME/snapshots/REVISION
HUB_CACHE_FOLDER = re.compile(r"models--([^/]+)--([^/]+)/snapshots/[^/]+/?$")


def parse_bool(text):
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(text)


# Field metadata of BaseLoading, which drives everything that handles the record:
# FLAG: the field is a flag of the inference commands (--NAME, add_base_loading_arguments), with these
#   argparse settings besides `default=None` (None: as the adapter's record says).
# TRAINED_BY_FLAG: qlora.py has a flag of the same name (QuantizationArguments) that sets it in training;
#   a checkpoint's saved value wins over that flag, and differences are named (base_loading_conflicts).
FLAG, TRAINED_BY_FLAG = "flag", "trained_by_flag"


def setting(default, trained_by_flag=False, **flag):
    """A BaseLoading field that a command line can set (`flag`: argparse settings, help included)."""
    return dataclasses.field(default=default, metadata={FLAG: flag, TRAINED_BY_FLAG: trained_by_flag})


@dataclasses.dataclass(frozen=True)
class BaseLoading:
    """Precision of the base weights, 4-bit data type, double quantization, compute dtype, the
    model class (informational: a different class under the same adapter means a different base)
    and which base it was: base_name of the model trained on and its config_fields (None in
    records saved before they were kept).

    The one list of what the record holds: saving, reading back (a field missing from an older
    file takes its default), inference flags, training flags and conflict checks all go over
    these fields and their metadata (FLAG, TRAINED_BY_FLAG). A new quantization setting is a field
    here, its meaning in quantization.build_quantization_config, and, if training sets it, a field
    of the same name in config.QuantizationArguments.
    """

    bits: int = setting(4, trained_by_flag=True, type=int, choices=(4, 8, 16, 32), help="base weight precision")
    quant_type: str = setting("nf4", trained_by_flag=True, choices=("nf4", "fp4"), help="4-bit data type")
    double_quant: bool = setting(True, trained_by_flag=True, type=parse_bool, metavar="{True,False}",
                                 help="quantize the quantization constants too")
    # Training computes in the dtype of --bf16/--fp16 instead of a flag of its own.
    compute_dtype: str = setting("bfloat16", choices=("bfloat16", "float16", "float32"),
                                 help="dtype the layers compute in")
    model_class: str | None = None
    base_model: str | None = None
    base_config: dict | None = None

    def __post_init__(self):
        object.__setattr__(self, "compute_dtype", dtype_name(self.compute_dtype))  # torch.bfloat16 -> 'bfloat16'

    def describe(self):
        """
        >>> BaseLoading().describe()
        '4-bit nf4 + double quant, bfloat16 compute'
        >>> BaseLoading(bits=16).describe()
        '16-bit, bfloat16 compute'
        """
        if self.bits == 4:
            return f"4-bit {self.quant_type}{' + double quant' if self.double_quant else ''}, {self.compute_dtype} compute"
        return f"{self.bits}-bit, {self.compute_dtype} compute"


def flag_fields():
    """The BaseLoading fields that are flags of the inference commands."""
    return [field for field in dataclasses.fields(BaseLoading) if FLAG in field.metadata]


def trained_settings():
    """Names of the BaseLoading fields that qlora.py's flags of the same name set in training."""
    return [field.name for field in flag_fields() if field.metadata[TRAINED_BY_FLAG]]


def setting_choices(name):
    """The values a BaseLoading setting takes (its flag's choices), or None when any value goes.

    >>> setting_choices("quant_type")
    ('nf4', 'fp4')
    """
    field = next(field for field in dataclasses.fields(BaseLoading) if field.name == name)
    return field.metadata.get(FLAG, {}).get("choices")


def dtype_name(dtype):
    """'bfloat16' for torch.bfloat16 or 'bfloat16'; None stays None."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def weight_files(folder):
    """The weights files of a local model folder (WEIGHT_FILE_PATTERNS), sorted."""
    return sorted({path for pattern in WEIGHT_FILE_PATTERNS
                   for path in glob.glob(os.path.join(glob.escape(folder), pattern))})


def check_model_weights(model_name_or_path):
    """A local model folder must hold weights; checked before the tokenizer, the data and the weights
    load, so that a folder with a config and a tokenizer alone (a download that stopped early, a
    tokenizer-only copy) fails in a second instead of after them. A hub id is left to the hub.

    >>> check_model_weights("huggyllama/llama-7b")
    """
    path = os.path.expanduser(model_name_or_path)
    if os.path.isdir(path) and not weight_files(path):
        raise ModelError(f"{model_name_or_path}: no model weights found in this folder (no "
                         f"{' or '.join(WEIGHT_FILE_PATTERNS)})")


def read_base_loading(adapter_dir):
    """The saved BaseLoading of an adapter directory, or None for adapters saved without one."""
    path = os.path.join(adapter_dir, BASE_LOADING_FILE)
    if not os.path.isfile(path):
        return None
    saved = read_json_object(path)
    known = {field.name for field in dataclasses.fields(BaseLoading)}
    return BaseLoading(**{key: value for key, value in saved.items() if key in known})


def write_base_loading(adapter_dir, record):
    """Save a BaseLoading beside an adapter: every field, by name (read_base_loading reads it back)."""
    write_json_atomic(os.path.join(adapter_dir, BASE_LOADING_FILE), dataclasses.asdict(record))


def base_name(model_name_or_path):
    """A local folder as its real absolute path (the same folder however it was spelt: relative, with
    ~, through a link), a hub id as it is.

    >>> base_name("huggyllama/llama-7b")
    'huggyllama/llama-7b'
    """
    path = os.path.expanduser(model_name_or_path)
    return os.path.realpath(path) if os.path.isdir(path) else model_name_or_path


def read_json_field(path, key):
    """One field of a JSON object file; None when the file, the object or the field is missing."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return None
    return value.get(key) if isinstance(value, dict) else None


def base_aliases(model_name_or_path):
    """The names one base goes by: its base_name and, for a local folder, the hub id it came from:
    the `_name_or_path` its config.json records (written by older transformers versions) or the
    hub cache folder it is (models--ORG--NAME/snapshots/...).

    >>> sorted(base_aliases("huggyllama/llama-7b"))
    ['huggyllama/llama-7b']
    """
    name = base_name(model_name_or_path)
    aliases = {name}
    if not os.path.isdir(name):
        return aliases
    recorded = read_json_field(os.path.join(name, MODEL_CONFIG_FILE), "_name_or_path")
    if isinstance(recorded, str) and recorded:
        aliases.add(recorded)
    if cached := HUB_CACHE_FOLDER.search(name):
        aliases.add(f"{cached.group(1)}/{cached.group(2)}")
    return aliases


def config_fields(config):
    """The IDENTITY_FIELDS a model config (a transformers config object) has, as a dict.

    >>> import argparse
    >>> config_fields(argparse.Namespace(model_type="llama", hidden_size=4096, vocab_size=None))
    {'model_type': 'llama', 'hidden_size': 4096}
    """
    fields = {field: getattr(config, field, None) for field in IDENTITY_FIELDS}
    return {field: value for field, value in fields.items() if value is not None}


def trained_base(adapter_dir):
    """(name, config_fields or None) of the base a local adapter was trained on: its base_loading.json
    record, else the name peft keeps in adapter_config.json (base_model_name_or_path, as it was
    given to the training run); None when neither says, or for an adapter on the hub."""
    saved = read_base_loading(adapter_dir) if os.path.isdir(adapter_dir) else None
    if saved and saved.base_model:
        return saved.base_model, saved.base_config
    name = read_json_field(os.path.join(adapter_dir, ADAPTER_CONFIG_FILE), "base_model_name_or_path")
    return (name, None) if isinstance(name, str) and name else None


def base_difference(trained_name, trained_config, given_name, given_config):
    """How the base given to an inference or merge command differs from the one the adapter was
    trained on, in words; None when they are the same or cannot be told apart.

    Configs decide when both are known (config_fields): a field that differs (model_type,
    hidden_size, vocab_size, ...) is another base whatever the names say, even at the same path;
    equal fields with another path are taken for a copy of the same model (moved, downloaded again,
    a hub id against its local folder) and pass without a warning, since refusing or warning on
    those would train users to ignore the warning. The price: two checkpoints of one architecture
    and size (a base and its own finetune) pass unnoticed, since telling them apart would mean
    hashing gigabytes of weights. Only without the trained base's config (a record saved before it
    was kept, whose base is not a local folder here) do names decide, through base_aliases.

    >>> base_difference("/m/llama-7b", {"hidden_size": 4096}, "/copy/llama-7b", {"hidden_size": 4096})
    >>> base_difference("/m/llama-7b", {"hidden_size": 4096, "vocab_size": 32000}, "/m/llama-7b",
    ...                 {"hidden_size": 5120, "vocab_size": 32000})
    'hidden_size 4096 vs 5120'
    >>> base_difference("huggyllama/llama-7b", None, "huggyllama/llama-7b", {"hidden_size": 4096})
    >>> base_difference("huggyllama/llama-7b", None, "huggyllama/llama-13b", {"hidden_size": 5120})
    'another name, and no config of the trained base to compare'
    """
    if trained_config and given_config:
        differing = [f"{field} {trained_config[field]} vs {given_config[field]}" for field in IDENTITY_FIELDS
                     if field in trained_config and field in given_config
                     and trained_config[field] != given_config[field]]
        return ", ".join(differing) or None
    if base_aliases(trained_name) & base_aliases(given_name):
        return None
    return "another name, and no config of the trained base to compare"


def resolve_base_loading(saved, **overrides):
    """The saved loading (or the default: NF4 + double quant, bf16) with the explicit values on top
    (overrides: BaseLoading fields by name; None leaves a field as it is).

    >>> resolve_base_loading(BaseLoading(quant_type="fp4", double_quant=False), bits=8).describe()
    '8-bit, bfloat16 compute'
    >>> resolve_base_loading(None, quant_type="fp4").quant_type
    'fp4'
    """
    return dataclasses.replace(saved or BaseLoading(), **{k: v for k, v in overrides.items() if v is not None})


def base_loading_for_flags(quantization_args, compute_dtype, model_class=None):
    """The record of a base loaded as qlora.py's flags say: the trained_settings from its
    quantization flags (QuantizationArguments), computing in compute_dtype."""
    trained = {name: getattr(quantization_args, name) for name in trained_settings()}
    return BaseLoading(**trained, compute_dtype=compute_dtype, model_class=model_class)


def base_loading_conflicts(saved, flags):
    """'name=saved (flags: value)' for each trained_setting where two records differ.

    >>> base_loading_conflicts(BaseLoading(quant_type="fp4"), BaseLoading(compute_dtype="float32"))
    ['quant_type=fp4 (flags: nf4)']
    """
    return [f"{name}={getattr(saved, name)} (flags: {getattr(flags, name)})"
            for name in trained_settings() if getattr(saved, name) != getattr(flags, name)]


def add_base_loading_arguments(parser, without=()):
    """The flag_fields as flags of an inference command line (--bits, --quant_type, --double_quant,
    --compute_dtype, each also spelt with hyphens), but those named in `without`; each defaults to
    what the adapter's base_loading.json says (NF4 + double quant, bf16 without it)."""
    group = parser.add_argument_group("base model loading (default: as the adapter was trained)")
    for field in flag_fields():
        if field.name not in without:
            spellings = dict.fromkeys((f"--{field.name}", f"--{field.name.replace('_', '-')}"))
            group.add_argument(*spellings, **field.metadata[FLAG])
    return group


def loading_overrides(args):
    """The base-loading flags of a parsed command line, as keyword arguments for load_for_inference."""
    return {field.name: getattr(args, field.name) for field in flag_fields() if hasattr(args, field.name)}
