"""The finetuning side's commands, one module each, with ``main(argv)`` and the console entry
point ``console_main()``: train (``qlora``), generate, merge_adapter, make_tiny_model,
build_mmlu_data, plot_training, estimate_memory, architecture_matrix. The files in scripts/ and
eval/ run them from a checkout."""

from qlorakit import quiet

# Before any command imports the libraries: some of the known harmless messages come at import.
quiet.install()
