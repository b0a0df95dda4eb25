"""Judge two answer files question by question with an OpenAI-compatible model (GPT-4 by default).

The command lives in judgekit.commands.review (installed as `qlora-judge`); this file runs it from a checkout:
`python eval/eval_gpt_review.py --help`.
"""

import sys

from judgekit.commands.review import console_main

if __name__ == "__main__":
    sys.exit(console_main())
