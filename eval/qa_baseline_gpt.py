"""Answer a questions file with an OpenAI-compatible model (the ChatGPT / GPT-4 baselines).

The command lives in judgekit.commands.qa_baseline (installed as `qlora-qa-baseline`); this file runs it from a checkout:
`python eval/qa_baseline_gpt.py --help`.
"""

import sys

from judgekit.commands.qa_baseline import console_main

if __name__ == "__main__":
    sys.exit(console_main())
