"""qlorakit: QLoRA finetuning on today's Hugging Face stack (the package behind qlora.py)."""

import os

# Small datasets written for the project (sample_data/README.md), installed with the package: the
# tiny models' tokenizer corpus, the architecture checks, the demo, tests and benchmarks.
SAMPLE_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_data")

