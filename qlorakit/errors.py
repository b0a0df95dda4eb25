"""Bad input and how every command reports it: one line on stderr, exit status 2.

Torch-free, so the judge side (judgekit) shares it.
"""

import sys

BAD_INPUT_STATUS = 2
INTERRUPTED_STATUS = 130


class InputError(Exception):
    """Bad user input: a missing file, a malformed row (with file:line), an unknown flag value."""


def run_main(main, argv=None, bad_input=()):
    """Call ``main(argv)``; bad input becomes ``error: ...`` and exit status 2, no traceback.

    ``bad_input`` adds the caller's own error classes to ``InputError`` and ``FileNotFoundError``.
    Anything else is a bug and keeps its traceback.
    """
    try:
        return main(argv)
    except (InputError, *bad_input) as err:
        print(f"error: {err}", file=sys.stderr)
        return BAD_INPUT_STATUS
    except FileNotFoundError as err:
        print(f"error: no such file: {err.filename}", file=sys.stderr)
        return BAD_INPUT_STATUS
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED_STATUS
