"""qlorakit: QLoRA finetuning on today's Hugging Face stack (the package behind qlora.py)."""
