"""Build a tiny random model of a chosen architecture and a locally trained tokenizer (no download).

The command lives in qlorakit.cli.make_tiny_model (installed as `qlora-make-tiny-model`); this file runs it from a checkout:
`python scripts/make_tiny_model.py --help`.
"""

import sys

from qlorakit.cli.make_tiny_model import console_main

if __name__ == "__main__":
    sys.exit(console_main())
