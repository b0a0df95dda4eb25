"""How the base under an adapter was loaded, saved beside the adapter and read back by inference.

An adapter learns to correct one particular quantization of the base weights: generating,
chatting, evaluating or merging against another (NF4 instead of the FP4 it was trained on, say)
changes its outputs. qlora.py writes ``base_loading.json`` into every ``adapter_model/`` and every
inference path rebuilds that base unless a flag says otherwise. Light on purpose (no torch import),
so that command lines can parse their flags before anything heavy loads.
"""

import argparse
import dataclasses
import json
import os
import sys

from .errors import CheckpointError, ModelError

BASE_LOADING_FILE = "base_loading.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's


@dataclasses.dataclass(frozen=True)
class BaseLoading:
    """Precision of the base weights, 4-bit data type, double quantization, compute dtype and the
    model class (informational: a different class under the same adapter means a different base)."""

    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    model_class: str | None = None

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


def dtype_name(dtype):
    """'bfloat16' for torch.bfloat16 or 'bfloat16'; None stays None."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def check_adapter(adapter):
    """A local adapter directory must hold peft's adapter_config.json; checked before the base
    loads, so a wrong path fails in a second. A name that is no local path is left to the hub.

    >>> check_adapter("timdettmers/guanaco-7b")
    >>> check_adapter("./no/such/adapter_model")
    Traceback (most recent call last):
    qlorakit.errors.ModelError: ./no/such/adapter_model: no adapter_config.json there (pass a checkpoint-N/adapter_model directory or a hub id)
    """
    path = os.path.expanduser(adapter)
    if (os.path.exists(path) or adapter.startswith((".", "/", "~"))) and \
            not os.path.isfile(os.path.join(path, ADAPTER_CONFIG_FILE)):
        raise ModelError(f"{adapter}: no {ADAPTER_CONFIG_FILE} there (pass a checkpoint-N/adapter_model directory "
                         "or a hub id)")


def resolve_adapter(adapter):
    """The adapter directory an --adapter value names: an adapter directory or hub id as it is; a
    checkpoint-N directory's adapter_model/; a run folder (qlora.py's output_dir) its final adapter
    (adapter_model/, the best checkpoint's, with --load_best_model_at_end) or else its newest complete
    checkpoint's adapter_model/, said in one line on stderr. A run folder without a complete
    checkpoint is a ModelError."""
    from .checkpoints import ADAPTER_DIR, find_resume_checkpoint, list_checkpoints

    path = os.path.expanduser(adapter)
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, ADAPTER_CONFIG_FILE)):
        return adapter
    if os.path.isfile(os.path.join(path, ADAPTER_DIR, ADAPTER_CONFIG_FILE)):
        chosen = os.path.join(adapter, ADAPTER_DIR)
        if list_checkpoints(path):
            print(f"adapter: {chosen} (the final adapter of {adapter}: its best checkpoint's)", file=sys.stderr)
        return chosen
    if not list_checkpoints(path):
        return adapter  # check_adapter says what is missing
    checkpoint, _ = find_resume_checkpoint(path, adapter_only=True)
    if checkpoint is None:
        raise ModelError(f"{adapter}: no complete checkpoint in this run folder (every checkpoint-N was torn "
                         "while saving)")
    chosen = os.path.join(checkpoint, ADAPTER_DIR)
    print(f"adapter: {chosen} (the newest complete checkpoint of {adapter})", file=sys.stderr)
    return chosen


def parse_adapter(value):
    """resolve_adapter for argparse: a bad value is a usage error (one line, exit 2)."""
    try:
        return resolve_adapter(value)
    except (ModelError, CheckpointError) as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def add_adapter_argument(parser, required=False, absent="none"):
    """--adapter: an adapter directory, a checkpoint-N directory, a run folder or a hub id."""
    parser.add_argument("--adapter", type=parse_adapter, required=required,
                        help="adapter directory (checkpoint-N/adapter_model), a checkpoint-N directory, a run "
                             "folder (its final adapter_model/, else its newest complete checkpoint) or a hub id; "
                             f"{absent}")


def read_base_loading(adapter_dir):
    """The saved BaseLoading of an adapter directory, or None for adapters saved without one."""
    path = os.path.join(adapter_dir, BASE_LOADING_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle)
    known = {field.name for field in dataclasses.fields(BaseLoading)}
    return BaseLoading(**{key: value for key, value in saved.items() if key in known})


def resolve_base_loading(saved, bits=None, quant_type=None, double_quant=None, compute_dtype=None):
    """The saved loading (or the default: NF4 + double quant, bf16) with the explicit values on top.

    >>> resolve_base_loading(BaseLoading(quant_type="fp4", double_quant=False), bits=8).describe()
    '8-bit, bfloat16 compute'
    >>> resolve_base_loading(None, quant_type="fp4").quant_type
    'fp4'
    """
    overrides = {"bits": bits, "quant_type": quant_type, "double_quant": double_quant,
                 "compute_dtype": dtype_name(compute_dtype)}
    return dataclasses.replace(saved or BaseLoading(), **{k: v for k, v in overrides.items() if v is not None})


def parse_bool(text):
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(text)


def add_base_loading_arguments(parser, compute_dtype=True):
    """--bits, --quant_type, --double_quant (and --compute_dtype) for inference command lines; each
    defaults to what the adapter's base_loading.json says (NF4 + double quant, bf16 without it)."""
    group = parser.add_argument_group("base model loading (default: as the adapter was trained)")
    group.add_argument("--bits", type=int, choices=(4, 8, 16, 32), help="base weight precision")
    group.add_argument("--quant_type", "--quant-type", choices=("nf4", "fp4"), help="4-bit data type")
    group.add_argument("--double_quant", "--double-quant", type=parse_bool, metavar="{True,False}",
                       help="quantize the quantization constants too")
    if compute_dtype:
        group.add_argument("--compute_dtype", "--compute-dtype", choices=("bfloat16", "float16", "float32"),
                           help="dtype the layers compute in")
    return group


def loading_overrides(args):
    """The base-loading flags of a parsed command line, as keyword arguments for load_for_inference."""
    names = ("bits", "quant_type", "double_quant", "compute_dtype")
    return {name: getattr(args, name) for name in names if hasattr(args, name)}
