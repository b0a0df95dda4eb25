"""Elo ratings from pairwise (three-class) review files, as in the QLoRA paper's tables.

The command lives in judgekit.commands.elo (installed as `qlora-elo`); this file runs it from a checkout:
`python eval/elo.py --help`.
"""

import sys

from judgekit.commands.elo import console_main

if __name__ == "__main__":
    sys.exit(console_main())
