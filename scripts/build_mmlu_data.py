"""Build the MMLU prompt files that `qlora.py --do_mmlu_eval --mmlu_data_dir DIR` reads.

The command lives in qlorakit.cli.build_mmlu_data (installed as `qlora-build-mmlu-data`); this file runs it from a checkout:
`python scripts/build_mmlu_data.py --help`.
"""

import sys

from qlorakit.cli.build_mmlu_data import console_main

if __name__ == "__main__":
    sys.exit(console_main())
