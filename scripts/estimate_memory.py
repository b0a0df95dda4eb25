"""Estimate the peak GPU memory of QLoRA training, component by component, before renting a GPU.

The command lives in qlorakit.cli.estimate_memory (installed as `qlora-estimate-memory`); this file runs it from a checkout:
`python scripts/estimate_memory.py --help`.
"""

import sys

from qlorakit.cli.estimate_memory import console_main

if __name__ == "__main__":
    sys.exit(console_main())
