"""Finetune a causal or seq2seq language model with QLoRA: a frozen 4-bit base plus trained LoRA adapters.

    python qlora.py --model_name_or_path M --dataset oasst1 --output_dir out --bf16 ...
    python qlora.py config.yaml [--flag value ...]     # flags after the file override it

The same as the installed `qlora` command (qlorakit.cli.train); `python qlora.py --help` lists the flags.
"""

import sys

from qlorakit.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
