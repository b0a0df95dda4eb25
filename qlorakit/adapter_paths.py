"""Where an adapter is: an --adapter value (an adapter directory, a checkpoint-N directory, a run
folder or a hub id) resolved to the adapter directory, and checked before anything loads."""

import argparse
import os
import sys

from .base_loading import ADAPTER_CONFIG_FILE
from .checkpoints import ADAPTER_DIR, find_resume_checkpoint, list_checkpoints
from .errors import CheckpointError, ModelError


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
