"""Chat in the terminal with a base model plus a QLoRA adapter, token by token.

The command lives in qlorakit.cli.chat (installed as `qlora-chat`); this file runs it from a checkout:
`python examples/chat.py --help`.
"""

import sys

from qlorakit.cli.chat import console_main

if __name__ == "__main__":
    sys.exit(console_main())
