"""Finetune a causal or seq2seq language model with QLoRA: a frozen 4-bit base plus trained LoRA adapters.

    python qlora.py --model_name_or_path M --dataset oasst1 --output_dir out --bf16 ...
    python qlora.py config.yaml [--flag value ...]     # flags after the file override it

Every flag of the QLoRA reference keeps its name and default; `python qlora.py --help` lists them.
"""

import sys

import torch

from qlorakit.config import parse_arguments
from qlorakit.errors import INTERRUPTED_STATUS, TrainingInterrupted, TrainingStopped, run_main
from qlorakit.launcher import environment_defaults
from qlorakit.train import release_process_group, run


def train(argv=None):
    """Parse the flags (or a config file) and train; bad input raises an ``InputError``."""
    defaults = environment_defaults(torch.accelerator.is_available(), torch.cuda.is_available())
    run(parse_arguments(argv, defaults))
    return 0


def main(argv=None):
    """Exit status: 0 done, 2 bad input (one line), 1 training stopped (one line), 130 stopped by
    Ctrl-C (one line, after saving a checkpoint)."""
    try:
        return run_main(train, argv)
    except TrainingStopped as error:
        print(f"error: {error}", file=sys.stderr)
        return INTERRUPTED_STATUS if isinstance(error, TrainingInterrupted) else 1
    finally:
        release_process_group()


def console_main():
    """The ``qlora`` command."""
    return main()
