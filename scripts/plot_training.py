"""Plot a run's training loss, eval loss and MMLU accuracy against the step.

The command lives in qlorakit.cli.plot_training (installed as `qlora-plot-training`); this file runs it from a checkout:
`python scripts/plot_training.py --help`.
"""

import sys

from qlorakit.cli.plot_training import console_main

if __name__ == "__main__":
    sys.exit(console_main())
