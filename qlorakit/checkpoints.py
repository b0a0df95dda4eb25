"""Checkpoint layout, validation and rotation (atomic writes: qlorakit.jsonl; the Trainer: qlorakit.trainer).

Layout (the reference's): ``output_dir/checkpoint-N/adapter_model/{adapter_config.json,
adapter_model.safetensors}`` beside the Trainer's optimizer, scheduler, RNG and state files, and
``output_dir/completed`` once training has finished. ``adapter_model/`` also holds
``base_loading.json``, how the base under the adapter was loaded (qlorakit.base_loading), and
``prompt_template.json``, the chat template trained with (qlorakit.trained_template).

A checkpoint is trusted only once it holds the ``checkpoint_complete`` marker, written last, after
every other file is on disk. A run killed while saving leaves a checkpoint without it, which resume
skips. Old checkpoints are deleted only after the new one is complete.
"""

import logging
import os
import re
import shutil

from .base_loading import BASE_LOADING_FILE
from .errors import CheckpointError
from .jsonl import fsync_directory, write_text_atomic
from .trained_template import TEMPLATE_FILE

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter_model"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", BASE_LOADING_FILE, TEMPLATE_FILE)
COMPLETE_MARKER = "checkpoint_complete"
RUN_COMPLETED_MARKER = "completed"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path):
    match = CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir):
    """checkpoint-N directories of output_dir, newest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [os.path.join(output_dir, name) for name in os.listdir(output_dir)
             if checkpoint_step(name) is not None and os.path.isdir(os.path.join(output_dir, name))]
    return sorted(found, key=checkpoint_step, reverse=True)


def is_complete(checkpoint_dir):
    return os.path.isfile(os.path.join(checkpoint_dir, COMPLETE_MARKER))


def find_resume_checkpoint(output_dir):
    """(newest complete checkpoint or None, whether the run already completed).

    A checkpoint without its marker was torn by a crash during saving: skip it with a warning.
    """
    completed = os.path.isfile(os.path.join(output_dir, RUN_COMPLETED_MARKER))
    for checkpoint in list_checkpoints(output_dir):
        if is_complete(checkpoint):
            return checkpoint, completed
        logger.warning("%s is incomplete (the run stopped while saving it); skipping it", checkpoint)
    return None, completed


def check_explicit_checkpoint(path):
    if not os.path.isdir(path):
        raise CheckpointError(f"--resume_from_checkpoint {path}: no such directory")
    if not is_complete(path):
        raise CheckpointError(f"--resume_from_checkpoint {path}: incomplete checkpoint (no {COMPLETE_MARKER} "
                              "marker: the run stopped while saving it); pick an earlier one")
    return path


def finalize_checkpoint(checkpoint_dir):
    """Move the adapter into adapter_model/ (reference layout) and mark the checkpoint complete."""
    adapter_dir = os.path.join(checkpoint_dir, ADAPTER_DIR)
    present = [name for name in ADAPTER_FILES if os.path.isfile(os.path.join(checkpoint_dir, name))]
    if present:
        os.makedirs(adapter_dir, exist_ok=True)
        for name in present:
            os.replace(os.path.join(checkpoint_dir, name), os.path.join(adapter_dir, name))
        fsync_directory(adapter_dir)
    for name in os.listdir(checkpoint_dir):
        path = os.path.join(checkpoint_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())
    write_text_atomic(os.path.join(checkpoint_dir, COMPLETE_MARKER), "")


def rotate_checkpoints(output_dir, keep):
    """Delete the oldest checkpoints beyond `keep`, never the newest complete one."""
    if not keep:
        return
    complete = [path for path in list_checkpoints(output_dir) if is_complete(path)]
    for path in complete[max(keep, 1):]:
        shutil.rmtree(path, ignore_errors=True)


def mark_run_completed(output_dir):
    write_text_atomic(os.path.join(output_dir, RUN_COMPLETED_MARKER), "")
