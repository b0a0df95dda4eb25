"""The one exception type the scripts turn into a one-line message instead of a traceback."""


class InputError(Exception):
    """Bad user input: a missing file, a malformed row (with file:line), an unknown category."""
