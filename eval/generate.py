"""Answer a questions file with a local base model plus an optional QLoRA adapter.

The command lives in qlorakit.cli.generate (installed as `qlora-generate`); this file runs it from a checkout:
`python eval/generate.py --help`.
"""

import sys

from qlorakit.cli.generate import console_main

if __name__ == "__main__":
    sys.exit(console_main())
