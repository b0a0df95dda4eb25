"""Scores relative to a reference system from 10-point score-pair review files (paper's table).

The command lives in judgekit.commands.relative_score (installed as `qlora-relative-score`); this file runs it from a checkout:
`python eval/relative_score.py --help`.
"""

import sys

from judgekit.commands.relative_score import console_main

if __name__ == "__main__":
    sys.exit(console_main())
