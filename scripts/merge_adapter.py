"""Merge a trained QLoRA adapter into its base model and save one standalone 16/32-bit checkpoint.

The command lives in qlorakit.cli.merge_adapter (installed as `qlora-merge-adapter`); this file runs it from a checkout:
`python scripts/merge_adapter.py --help`.
"""

import sys

from qlorakit.cli.merge_adapter import console_main

if __name__ == "__main__":
    sys.exit(console_main())
