"""JSON and JSONL files read with file:line errors and written so that a crash never leaves half a
file (atomic rename) or half a row (append, flush, fsync), with the permissions the umask gives.
Torch-free: the judge side uses it too.
"""

import argparse
import json
import logging
import os
import re
import tempfile

from .errors import InputError

logger = logging.getLogger(__name__)

# What a JSON value is, as errors name it.
JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "true or false", type(None): "null"}


def read_jsonl(path, tolerate_torn_tail=False):
    """Yield ``(line_number, row)`` for each JSON object line of ``path``; blank lines are skipped.

    With ``tolerate_torn_tail`` a last line that lacks its newline and does not parse (a write
    cut short by a crash) is ignored with a warning; any other bad line is an ``InputError``
    naming ``path:line``.
    """
    if not os.path.isfile(path):
        raise InputError(f"no such file: {path}")
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            is_tail = number == len(lines)  # the last piece has no newline after it
            if tolerate_torn_tail and is_tail:
                logger.warning("%s:%d: ignoring a torn last line (interrupted write)", path, number)
                return
            raise InputError(f"{path}:{number}: invalid JSON ({err})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: {JSON_KINDS[type(row)]}, not a JSON object (a row)")
        yield number, row


def read_json_object(path):
    """The JSON object a record file (base_loading.json, run_settings.json, ...) holds; a file damaged
    by hand or by the disk is an ``InputError`` naming it, not a traceback."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: {JSON_KINDS[type(value)]}, not a JSON object")
    return value


def appended_file(value):
    """argparse type of an output file a command appends rows to: a folder there is a usage error
    (one line), before anything is loaded."""
    if os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} is a folder: name the JSONL file to write in it")
    return value


def process_umask():
    """The umask, read from /proc where it can be, so that it is never changed, not even briefly."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return int(re.search(r"^Umask:\s*([0-7]+)$", status.read(), re.MULTILINE).group(1), 8)
    except (OSError, AttributeError):
        mask = os.umask(0o077)
        os.umask(mask)
        return mask


def default_modes():
    """(file, folder): the modes open() and mkdir() give new files and folders."""
    mask = process_umask()
    return 0o666 & ~mask, 0o777 & ~mask


def give_default_modes(root):
    """Give root and everything under it the modes the umask gives new files and folders.

    Temporary files and folders (tempfile, and safetensors 0.8 for every tensor file it writes) are
    created owner-only and keep that mode when renamed into place: adapters, checkpoints and merged
    models would be unreadable by the group and by a serving process running as another user. A file
    system that refuses modes (some FUSE mounts) leaves them as they are: a save never fails for it.
    """
    file_mode, folder_mode = default_modes()
    if not os.path.isdir(root):
        set_mode(root, file_mode)
        return
    for folder, _, names in os.walk(root):
        set_mode(folder, folder_mode)
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                set_mode(path, file_mode)


def set_mode(path_or_descriptor, mode):
    try:
        os.chmod(path_or_descriptor, mode)
    except OSError:
        pass  # permissions are a convenience here; the data is written either way


def fsync_directory(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomic(path, text):
    """Write via a temporary file in the same directory and rename: readers see all or nothing."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        set_mode(handle, default_modes()[0])
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    fsync_directory(directory)


def write_json_atomic(path, data):
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_jsonl_atomic(path, rows):
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


class JsonlAppender:
    """Append JSON rows to a file, each one flushed and fsynced before the next is written.

    A kill can then only tear the row being written; on open, such a torn tail (bytes after the
    last newline) is cut off so that the next row starts on a line of its own.
    """

    def __init__(self, path):
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._drop_torn_tail()
        self._handle = open(path, "a", encoding="utf-8")

    def _drop_torn_tail(self):
        if not os.path.isfile(self.path):
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                logger.warning("%s: dropping a torn last line left by an interrupted run", self.path)
                handle.truncate(keep)

    def write(self, row):
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self):
        self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_done_keys(path, key_of):
    """Keys (``key_of(row)``) of the rows already in an output file; none if it does not exist.

    Used to resume: work whose key is here has been paid for and is not asked again.
    """
    if not os.path.isfile(path):
        return set()
    return {key_of(row) for _, row in read_jsonl(path, tolerate_torn_tail=True)}
