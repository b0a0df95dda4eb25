"""The finetuning side's commands, one module each, with ``main(argv)`` and the console entry
point ``console_main()``: train (``qlora``), generate, merge_adapter, make_tiny_model,
build_mmlu_data, plot_training, estimate_memory, architecture_matrix. The files in scripts/ and
eval/ run them from a checkout."""

import os

# The repository's examples/data, for the commands that default to its sample files (tiny-model
# tokenizer corpus, architecture checks). It exists in a checkout and an editable install only;
# elsewhere those commands ask for the files by flag.
CHECKOUT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE_DATA = os.path.join(CHECKOUT_ROOT, "examples", "data")
