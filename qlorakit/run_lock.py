"""One run per output folder or appended output file. Two runs writing the same checkpoints would
overwrite each other's files and the later one would resume the earlier one's state; two judge
runs appending to one review file would both pay for every review still missing. The lock file
lets the second one refuse in one line instead. Torch-free: the judge side uses it too.

The lock is a file, linked into place only if none exists (atomic on local and NFS file systems),
that holds the holder's pid, host and start time. A lock whose holder is a dead process on this host is stale
(left by a SIGKILL or a crash) and is taken over with a notice; a lock held from another host
is always respected, since its pid cannot be checked from here.
"""

import contextlib
import json
import logging
import os
import socket
import time

from .errors import InputError

LOCK_FILE = "run.lock"

logger = logging.getLogger(__name__)


class RunLocked(InputError):
    """Another live run holds the output folder."""


def describe_holder(holder):
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {started}"


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def is_stale(holder):
    """Only a holder on this host can be seen to be dead; a lock file that is not a holder's record
    (damaged by hand or by the disk) counts as stale."""
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return True
    return holder.get("host") == socket.gethostname() and not process_alive(holder["pid"])


def read_holder(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def create_lock(path):
    """Create the lock file, complete with its holder, if none exists; False if one does. Written
    aside and hard-linked into place, so a second run never reads a lock that is still empty."""
    draft = f"{path}.{socket.gethostname()}.{os.getpid()}"
    with open(draft, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
    try:
        os.link(draft, path)
    except FileExistsError:
        return False
    finally:
        os.remove(draft)
    return True


def acquire_lock(path, subject, elsewhere):
    """Take the lock file `path` for `subject` (what it guards) or raise RunLocked naming its holder
    and `elsewhere` (the way out: another output); returns path."""
    if create_lock(path):
        return path
    holder = read_holder(path)
    if not is_stale(holder):
        raise RunLocked(f"{subject} is locked by another run ({describe_holder(holder)}): wait for it to "
                        f"end or {elsewhere} (delete {path} only if that run is gone)")
    logger.warning("taking over the stale lock of %s (%s is not running)", subject,
                   describe_holder(holder) if isinstance(holder, dict) else "unreadable lock file")
    os.remove(path)
    if not create_lock(path):  # another run took it over between our two steps
        raise RunLocked(f"{subject} is locked by another run ({describe_holder(read_holder(path) or {})})")
    return path


def acquire(output_dir):
    """Take the output folder's lock or raise RunLocked naming its holder; returns the lock path."""
    os.makedirs(output_dir, exist_ok=True)
    return acquire_lock(os.path.join(output_dir, LOCK_FILE), output_dir, "use another --output_dir")


@contextlib.contextmanager
def appending(output_file, elsewhere="write to another file"):
    """Hold OUTPUT.lock beside output_file while a command reads what it holds and appends the rest."""
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    path = acquire_lock(f"{output_file}.lock", output_file, elsewhere)
    try:
        yield
    finally:
        release(path)


def release(path):
    """Remove the lock if this process still holds it."""
    holder = read_holder(path)
    if isinstance(holder, dict) and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        os.remove(path)
