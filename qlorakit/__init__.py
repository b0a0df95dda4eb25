"""qlorakit: QLoRA finetuning on today's Hugging Face stack (the package behind qlora.py)."""

import logging

# On CPU, bitsandbytes logs at import that the optional `kernels` package (which would fetch
# kernels from the hub) is missing, then uses its own kernel: noise on every run, so hidden.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
