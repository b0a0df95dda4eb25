"""Bad input and how every command reports it: one line on stderr, exit status 2.

Torch-free, so the judge side (judgekit) shares it.
"""

import sys

BAD_INPUT_STATUS = 2
INTERRUPTED_STATUS = 130


class InputError(Exception):
    """Bad user input: a missing file, a malformed row (with file:line), an unknown flag value."""


# The finetuning side's kinds of bad input (also ValueErrors, as they were before they had a home).

class ArgumentError(InputError, ValueError):
    """A bad flag value or combination."""


class DataError(InputError, ValueError):
    """Bad data or data flags."""


class ConversationError(InputError, ValueError):
    """A row that is not a usable conversation; the caller adds the file and row."""


class SkippedRow(ConversationError):
    """A row a format leaves out instead of refusing the file: known noise of a public dataset that
    the user cannot fix (MOSS-003's unreadable plugin calls). The caller counts such rows in the log,
    naming the first; a format that does not skip rows refuses it as any other bad row."""


class ModelError(InputError, ValueError):
    """A base model that cannot be trained or loaded as asked."""


class CheckpointError(InputError, ValueError):
    """A --resume_from_checkpoint that cannot be trusted."""


class TrainingStopped(RuntimeError):
    """Training gave up (too many non-finite steps): not bad input; qlora.py exits with 1."""


class TrainingInterrupted(TrainingStopped):
    """Ctrl-C stopped training after saving a checkpoint; qlora.py exits with 130, as for SIGINT."""


def run_main(main, argv=None):
    """Call ``main(argv)``; bad input (``InputError``, a missing file) becomes ``error: ...`` and
    exit status 2, no traceback. Anything else is a bug and keeps its traceback.
    """
    try:
        return main(argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return BAD_INPUT_STATUS
    except FileNotFoundError as err:
        print(f"error: no such file: {err.filename}", file=sys.stderr)
        return BAD_INPUT_STATUS
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED_STATUS
