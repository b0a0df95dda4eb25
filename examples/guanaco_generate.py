"""Answer one question with a 4-bit base model plus a trained QLoRA adapter (CPU or GPU).

The command lives in qlorakit.cli.guanaco_generate (installed as `qlora-guanaco-generate`); this file runs it from a checkout:
`python examples/guanaco_generate.py --help`.
"""

import sys

from qlorakit.cli.guanaco_generate import console_main

if __name__ == "__main__":
    sys.exit(console_main())
