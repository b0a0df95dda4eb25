"""Train, predict and merge a tiny random model of every supported architecture; write the table.

The command lives in qlorakit.cli.architecture_matrix (installed as `qlora-architecture-matrix`); this file runs it from a checkout:
`python scripts/architecture_matrix.py --help`.
"""

import sys

from qlorakit.cli.architecture_matrix import console_main

if __name__ == "__main__":
    sys.exit(console_main())
