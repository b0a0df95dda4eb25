"""Library messages known to be harmless for these commands, silenced where they are raised.

Each entry matches one message by its text and by its source (warning category and module, or
logger name) and says why it does not concern the user; any other warning or log line still shows.
Torch-free: the commands install the filters before they import the libraries, since some of
these messages are printed at import.
"""

import logging
import re
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownWarning:
    """A ``warnings.warn`` message: ``message`` and ``module`` are regexes matched at their start."""

    message: str
    category: type
    module: str
    reason: str


@dataclass(frozen=True)
class KnownLogRecord:
    """A message logged on ``logger`` (exactly that logger); ``message`` is a regex matched at its start."""

    logger: str
    message: str
    reason: str


KNOWN_WARNINGS = (
    KnownWarning(r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils",
                 "peft reads the old attribute name inside the libraries; nothing the user can change"),
    KnownWarning(r"Paged optimizers are not supported on CPU", UserWarning, r"bitsandbytes\.optim\.optimizer",
                 "on the CPU paged AdamW is plain AdamW; the training log says so in one line"),
    KnownWarning(r"'pin_memory' argument is set as true but no accelerator is found", UserWarning,
                 r"torch\.utils\.data\.dataloader",
                 "without an accelerator there is no pinned memory to use; batches load as before"),
)

KNOWN_LOG_RECORDS = (
    KnownLogRecord("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward from kernels-community",
                   "the optional `kernels` package would download a kernel from the hub; bitsandbytes' own runs"),
    KnownLogRecord("transformers.trainer_utils", r"The tokenizer has new PAD/BOS/EOS tokens",
                   "the model config takes the tokenizer's special tokens, the ones the data was built with"),
    # datasets logs these just before it raises; its rows count from 0 and may not be the bad one.
    KnownLogRecord("datasets.packaged_modules.json.json", r"Failed to load JSON from file",
                   "the load then fails, and qlorakit.data says why in one line naming the file and, for a line "
                   "that does not parse or is not an object, its line number"),
    KnownLogRecord("datasets.packaged_modules.json.json", r"Failed to convert pandas DataFrame to Arrow Table",
                   "the load then fails, and qlorakit.data says why in one line naming the file"),
)


class DropKnownMessages(logging.Filter):
    """Drops a logger's records whose message matches one of the patterns."""

    def __init__(self, patterns):
        super().__init__()
        self.patterns = tuple(re.compile(pattern) for pattern in patterns)

    def filter(self, record):
        message = record.getMessage()
        return not any(pattern.match(message) for pattern in self.patterns)


def install():
    """Silence the known harmless messages in this process; calling it again adds nothing."""
    for known in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=known.message, category=known.category, module=known.module)
    for name in {known.logger for known in KNOWN_LOG_RECORDS}:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, DropKnownMessages) for existing in logger.filters):
            logger.addFilter(DropKnownMessages(known.message for known in KNOWN_LOG_RECORDS if known.logger == name))


def paged_optimizer_note(optim, device_type):
    """Our one line in place of bitsandbytes' warning: a paged optimizer on the CPU is not paged."""
    if optim.startswith("paged_") and device_type == "cpu":
        return f"--optim {optim} runs without paging on the CPU (paging moves optimizer state off a GPU)"
    return None
