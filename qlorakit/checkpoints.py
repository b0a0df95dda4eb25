"""Checkpoint layout, verification and rotation (atomic writes: qlorakit.jsonl; the Trainer: qlorakit.trainer).

Layout (the reference's): ``output_dir/checkpoint-N/adapter_model/{adapter_config.json,
adapter_model.safetensors}`` beside the Trainer's optimizer, scheduler, RNG and state files, and
``output_dir/completed`` once training has finished. ``adapter_model/`` also holds
``base_loading.json``, how the base under the adapter was loaded (qlorakit.base_loading), and
``prompt_template.json``, the chat template trained with (qlorakit.trained_template). With
--load_best_model_at_end, ``output_dir/adapter_model/`` is the final adapter: the best checkpoint's,
reloaded and saved at the end of training; rotation never deletes the best checkpoint.

A checkpoint is trusted only when its ``checkpoint_complete`` marker is there and every file it
lists still matches. The marker is a manifest: each file's size, and a SHA-256 of the adapter
weights. It is removed first whenever a checkpoint is re-saved or deleted, and written last,
after every file and folder of the checkpoint is fsynced. So a kill at any moment leaves either
a checkpoint without a marker (skipped) or one whose files are all on disk.

Beyond the manifest, the files a resume reads are checked for what a loader would trip over:
trainer_state.json must parse, the torch files (optimizer, scheduler, RNG states) must be
intact zip archives (their CRCs are checked), the safetensors header must describe the file's
size. An empty marker (written by earlier versions, before the manifest) gets these checks alone.
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import zipfile

from safetensors import SafetensorError

from .base_loading import ADAPTER_CONFIG_FILE, BASE_LOADING_FILE
from .errors import CheckpointError, InputError
from .jsonl import fsync_directory, give_default_modes, write_json_atomic, write_text_atomic
from .trained_template import TEMPLATE_FILE

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter_model"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", BASE_LOADING_FILE, TEMPLATE_FILE)
COMPLETE_MARKER = "checkpoint_complete"
RUN_COMPLETED_MARKER = "completed"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
MANIFEST_FORMAT = 1
TRAINER_STATE_FILE = "trainer_state.json"
# What a resume reads; checked by name when the marker predates the manifest.
RESUME_FILES = ("optimizer.pt", "scheduler.pt", TRAINER_STATE_FILE, os.path.join(ADAPTER_DIR, "adapter_config.json"),
                os.path.join(ADAPTER_DIR, "adapter_model.safetensors"))
RNG_STATE_PATTERN = re.compile(r"^rng_state(_\d+)?\.pth$")


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


def checkpoint_files(checkpoint_dir):
    """Paths of the checkpoint's files relative to it, the marker and temporary files left out."""
    found = []
    for folder, _, names in os.walk(checkpoint_dir):
        for name in names:
            if name == COMPLETE_MARKER or name.startswith(".tmp-"):
                continue
            found.append(os.path.relpath(os.path.join(folder, name), checkpoint_dir))
    return sorted(found)


def is_adapter_weights(relative_path):
    return relative_path.startswith(ADAPTER_DIR + os.sep) and relative_path.endswith(".safetensors")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(checkpoint_dir):
    """What the marker records: every file's size, and the adapter weights' SHA-256."""
    files = {}
    for relative in checkpoint_files(checkpoint_dir):
        path = os.path.join(checkpoint_dir, relative)
        entry = {"size": os.path.getsize(path)}
        if is_adapter_weights(relative):
            entry["sha256"] = file_sha256(path)
        files[relative] = entry
    return {"format": MANIFEST_FORMAT, "files": files}


def read_manifest(checkpoint_dir):
    """The marker's manifest; None for an empty marker (earlier versions); raises ValueError if unreadable."""
    with open(os.path.join(checkpoint_dir, COMPLETE_MARKER), "rb") as stream:
        raw = stream.read()
    if not raw.strip():
        return None
    manifest = json.loads(raw)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError("not a manifest")
    return manifest


def manifest_problems(checkpoint_dir, manifest):
    """Each listed file that is missing, of another size, or (adapter weights) of another hash."""
    problems = []
    for relative, entry in sorted(manifest["files"].items()):
        path = os.path.join(checkpoint_dir, relative)
        if not os.path.isfile(path):
            problems.append(f"{relative} is missing")
        elif os.path.getsize(path) != entry.get("size"):
            problems.append(f"{relative} has {os.path.getsize(path)} bytes, {entry.get('size')} were saved")
        elif "sha256" in entry and file_sha256(path) != entry["sha256"]:
            problems.append(f"{relative} differs from the saved file (SHA-256)")
    return problems


def safetensors_problem(path):
    """Why a safetensors file cannot be loaded (torn or garbage header, wrong length), or None."""
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        head = stream.read(8)
        if len(head) < 8:
            return "too short for a safetensors header"
        header_size = struct.unpack("<Q", head)[0]
        if header_size > size - 8:
            return "truncated safetensors header"
        try:
            header = json.loads(stream.read(header_size))
        except ValueError:
            return "unreadable safetensors header"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if 8 + header_size + max(ends, default=0) != size:
        return f"{size} bytes, its header describes {8 + header_size + max(ends, default=0)} (truncated)"
    return None


def torch_file_problem(path):
    """Why a torch.save file (a zip archive) is unreadable: a broken archive or a bad CRC; or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"not a readable torch file ({err})"
    return f"corrupt entry {bad}" if bad else None


def json_problem(path):
    try:
        with open(path, "rb") as stream:
            json.load(stream)
    except (ValueError, UnicodeDecodeError) as err:
        return f"invalid JSON ({err})"
    return None


def content_problems(checkpoint_dir, scope=""):
    """What a loader would trip over among the files under scope ("" for the whole checkpoint):
    a required file missing, or one its loader cannot read."""
    present = [name for name in checkpoint_files(checkpoint_dir) if name.startswith(scope)]
    problems = [f"{name} is missing" for name in RESUME_FILES if name.startswith(scope) and name not in present]
    if not scope and not any(RNG_STATE_PATTERN.match(name) for name in present):
        problems.append("rng_state.pth is missing")
    for relative in present:
        path = os.path.join(checkpoint_dir, relative)
        if relative.endswith(".safetensors"):
            problem = safetensors_problem(path)
        elif relative.endswith((".pt", ".pth")):
            problem = torch_file_problem(path)
        elif relative.endswith(".json"):
            problem = json_problem(path)
        else:
            continue
        if problem:
            problems.append(f"{relative}: {problem}")
    return problems


def verify_checkpoint(checkpoint_dir, adapter_only=False):
    """Why checkpoint_dir cannot be trusted (a list of reasons; empty when it can).

    adapter_only checks just adapter_model/, all that inference reads: a finished run whose
    optimizer states were deleted to free disk still serves its adapters.
    """
    if not is_complete(checkpoint_dir):
        return [f"no {COMPLETE_MARKER} marker (the run stopped while saving it)"]
    try:
        manifest = read_manifest(checkpoint_dir)
    except (ValueError, UnicodeDecodeError):
        return [f"unreadable {COMPLETE_MARKER} marker"]
    scope = ADAPTER_DIR + os.sep if adapter_only else ""
    if manifest is not None:
        listed = {name: entry for name, entry in manifest["files"].items() if name.startswith(scope)}
        problems = manifest_problems(checkpoint_dir, {"files": listed})
        if problems:
            return problems
    return content_problems(checkpoint_dir, scope)


def find_resume_checkpoint(output_dir, adapter_only=False):
    """(newest checkpoint that verifies, or None; whether the run already completed).

    Checkpoints that fail verification are skipped with a warning naming what is wrong. When
    none verifies and one of them had been marked complete (then damaged), that is a
    CheckpointError: starting over would throw away a run the user expects to continue. Torn
    checkpoints alone (the first save was killed) held nothing yet: training starts over, saying so.
    adapter_only: see verify_checkpoint (inference asks for an adapter, not for a resumable state).
    """
    completed = os.path.isfile(os.path.join(output_dir, RUN_COMPLETED_MARKER))
    found = list_checkpoints(output_dir)
    damaged = [checkpoint for checkpoint in found if is_complete(checkpoint)]
    for checkpoint in found:
        problems = verify_checkpoint(checkpoint, adapter_only)
        if not problems:
            if read_manifest(checkpoint) is None:
                logger.warning("%s has a marker from an earlier version (no file list): its files were checked "
                               "for readability only", checkpoint)
            return checkpoint, completed
        logger.warning("%s cannot be trusted, skipping it: %s", checkpoint, "; ".join(problems))
    if damaged:
        advice = "" if adapter_only else "; move them away to start over, or use another --output_dir"
        raise CheckpointError(f"{output_dir}: none of its {len(found)} checkpoints can be trusted (see the warnings "
                              f"above){advice}")
    if found and not adapter_only:
        logger.warning("%s: no checkpoint was completed before the run stopped; training starts from step 0",
                       output_dir)
    return None, completed


def is_bare_adapter(path):
    """An adapter directory (peft's adapter_config.json) without the Trainer's state beside it: a
    published adapter or a checkpoint's adapter_model/, which can start a run but not resume one."""
    return (os.path.isfile(os.path.join(path, ADAPTER_CONFIG_FILE))
            and not os.path.isfile(os.path.join(path, TRAINER_STATE_FILE)))


def check_explicit_checkpoint(path):
    if not os.path.isdir(path):
        raise CheckpointError(f"--resume_from_checkpoint {path}: no such directory")
    if is_bare_adapter(path):
        raise CheckpointError(f"--resume_from_checkpoint {path}: an adapter, not a checkpoint (no "
                              f"{TRAINER_STATE_FILE}); to train on from it with a fresh optimizer, pass "
                              f"--adapter_name_or_path {path}")
    problems = verify_checkpoint(path)
    if problems:
        raise CheckpointError(f"--resume_from_checkpoint {path}: cannot be trusted ({'; '.join(problems)}); "
                              "pick an earlier one")
    return path


class CheckpointSaveError(InputError):
    """The disk refused a checkpoint (full, read-only, quota): the environment's to fix, so one
    line and exit status 2 rather than a traceback."""


def is_write_failure(err):
    """torch.save reports a failed write (ENOSPC) as a RuntimeError from its zip writer."""
    if isinstance(err, (OSError, SafetensorError)):
        return True
    return "inline_container" in str(err) or "PytorchStreamWriter" in str(err)


@contextlib.contextmanager
def save_errors_reported(checkpoint_dir):
    """Turn a failed write while saving checkpoint_dir into a CheckpointSaveError naming it.
    Nothing older has been rotated away by then: rotation runs only after the marker is written."""
    try:
        yield
    except (OSError, SafetensorError, RuntimeError) as err:
        if not is_write_failure(err):
            raise
        raise CheckpointSaveError(f"saving {checkpoint_dir} failed: {err}; the checkpoints before it are "
                                  "intact, free space and run the same command to resume") from err


def unmark_checkpoint(checkpoint_dir):
    """Withdraw trust first, before a checkpoint is overwritten or deleted, so that a kill
    halfway through never leaves a marker over files that changed."""
    marker = os.path.join(checkpoint_dir, COMPLETE_MARKER)
    if os.path.exists(marker):
        os.remove(marker)
        fsync_directory(checkpoint_dir)


def fsync_tree(root):
    """fsync every file and folder under root, folders after their contents."""
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            with open(os.path.join(folder, name), "rb") as stream:
                os.fsync(stream.fileno())
        fsync_directory(folder)


def finalize_checkpoint(checkpoint_dir, adapter_tokenizer=None):
    """Move the adapter into adapter_model/ (reference layout), save adapter_tokenizer there when
    given, give every file the umask's mode, fsync everything, then write the marker with the manifest."""
    adapter_dir = os.path.join(checkpoint_dir, ADAPTER_DIR)
    present = [name for name in ADAPTER_FILES if os.path.isfile(os.path.join(checkpoint_dir, name))]
    if present:
        os.makedirs(adapter_dir, exist_ok=True)
        for name in present:
            os.replace(os.path.join(checkpoint_dir, name), os.path.join(adapter_dir, name))
        if adapter_tokenizer is not None:
            adapter_tokenizer.save_pretrained(adapter_dir)
    give_default_modes(checkpoint_dir)
    fsync_tree(checkpoint_dir)
    write_json_atomic(os.path.join(checkpoint_dir, COMPLETE_MARKER), build_manifest(checkpoint_dir))


def checkpoints_to_keep(complete, keep, best=None):
    """The `keep` newest of the complete checkpoints (newest first), the newest always (a resume
    starts there) and the best (transformers' state.best_model_checkpoint) always: it takes the
    place of the oldest kept one, and with keep=1 sits beside the newest.

    >>> checkpoints_to_keep(["out/checkpoint-4", "out/checkpoint-3", "out/checkpoint-2"], 2, "out/checkpoint-2")
    ['out/checkpoint-4', 'out/checkpoint-2']
    >>> checkpoints_to_keep(["out/checkpoint-4", "out/checkpoint-3"], 1, "/elsewhere/out/checkpoint-3")
    ['out/checkpoint-4', 'out/checkpoint-3']
    """
    kept = complete[:max(keep, 1)]
    best_step = checkpoint_step(best) if best else None
    best_path = next((path for path in complete if checkpoint_step(path) == best_step), None)
    if best_path is not None and best_path not in kept:
        kept = kept[:max(keep - 1, 1)] + [best_path]
    return kept


def rotate_checkpoints(output_dir, keep, best=None):
    """Delete the complete checkpoints that checkpoints_to_keep leaves out; each loses its marker
    before its files, so a kill during deletion leaves no 'complete' half checkpoint."""
    if not keep:
        return
    complete = [path for path in list_checkpoints(output_dir) if is_complete(path)]
    kept = checkpoints_to_keep(complete, keep, best)
    for path in complete:
        if path not in kept:
            unmark_checkpoint(path)
            shutil.rmtree(path, ignore_errors=True)


def final_adapter_dir(output_dir):
    """output_dir/adapter_model: the adapter a run ends with when --load_best_model_at_end loads its
    best checkpoint (without it, the newest checkpoint's adapter is the final one)."""
    return os.path.join(output_dir, ADAPTER_DIR)


def remove_final_adapter(output_dir):
    """Remove the final adapter of an earlier training in output_dir (True if there was one): a run
    folder serves its final adapter before its checkpoints, and training anew must not leave the
    old one to be served."""
    final = final_adapter_dir(output_dir)
    if not os.path.isdir(final):
        return False
    shutil.rmtree(final)
    fsync_directory(output_dir)
    return True


def save_final_adapter(output_dir, save_pretrained):
    """save_pretrained(folder) into a temporary folder, fsynced, then renamed to output_dir/adapter_model,
    so that a kill leaves no half-written final adapter; returns its path."""
    final = final_adapter_dir(output_dir)
    partial = os.path.join(output_dir, f".tmp-{ADAPTER_DIR}")
    with save_errors_reported(final):
        shutil.rmtree(partial, ignore_errors=True)
        save_pretrained(partial)
        give_default_modes(partial)
        fsync_tree(partial)
        remove_final_adapter(output_dir)
        os.rename(partial, final)
        fsync_directory(output_dir)
    return final


def best_checkpoint_of(checkpoint_dir):
    """The checkpoint that checkpoint_dir's trainer_state.json records as the best (a sibling of it),
    if it is still there and its adapter verifies; else None."""
    with open(os.path.join(checkpoint_dir, TRAINER_STATE_FILE), encoding="utf-8") as stream:
        recorded = json.load(stream).get("best_model_checkpoint")
    if not recorded:
        return None
    best = os.path.join(os.path.dirname(os.path.normpath(checkpoint_dir)), os.path.basename(os.path.normpath(recorded)))
    if not os.path.isdir(best) or verify_checkpoint(best, adapter_only=True):
        logger.warning("%s records %s as its best checkpoint, which is gone or damaged", checkpoint_dir, recorded)
        return None
    return best


def mark_run_completed(output_dir):
    write_text_atomic(os.path.join(output_dir, RUN_COMPLETED_MARKER), "")
