"""Finetune a causal or seq2seq language model with QLoRA: a frozen 4-bit base plus trained LoRA adapters.

    python qlora.py --model_name_or_path M --dataset oasst1 --output_dir out --bf16 ...
    python qlora.py config.yaml

Every flag of the QLoRA reference keeps its name and default; `python qlora.py --help` lists them.
"""

import sys

from qlorakit.callbacks import TrainingStopped
from qlorakit.checkpoints import CheckpointError
from qlorakit.config import ArgumentError, parse_arguments
from qlorakit.data import DataError
from qlorakit.model import ModelError
from qlorakit.train import release_process_group, run

BAD_INPUT = (ArgumentError, DataError, CheckpointError, ModelError)


def main(argv=None):
    try:
        run(*parse_arguments(argv))
    except BAD_INPUT as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        release_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
