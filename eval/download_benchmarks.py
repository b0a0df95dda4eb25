"""Fetch the two chatbot benchmarks of the QLoRA paper into the questions format.

The command lives in judgekit.commands.download_benchmarks (installed as `qlora-download-benchmarks`); this file runs it from a checkout:
`python eval/download_benchmarks.py --help`.
"""

import sys

from judgekit.commands.download_benchmarks import console_main

if __name__ == "__main__":
    sys.exit(console_main())
