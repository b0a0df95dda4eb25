"""The one exception type the judge commands turn into a one-line message instead of a traceback
(shared with qlorakit, so every command of the project reports bad input the same way)."""

from qlorakit.errors import InputError

__all__ = ["InputError"]
