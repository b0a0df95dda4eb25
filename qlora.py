"""Finetune a causal language model with QLoRA: a frozen 4-bit base plus trained LoRA adapters.

    python qlora.py --model_name_or_path M --dataset oasst1 --output_dir out --bf16 ...
    python qlora.py config.yaml

Every flag of the QLoRA reference keeps its name and default; `python qlora.py --help` lists them.
"""

import sys

from qlorakit.config import ArgumentError, parse_arguments
from qlorakit.data import DataError


def main(argv=None):
    try:
        arguments = parse_arguments(argv)
        from qlorakit.train import run  # heavy imports only once the flags are known to be good

        run(*arguments)
    except (ArgumentError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
