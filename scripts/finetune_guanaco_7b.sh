#!/usr/bin/env bash
# Guanaco 7B: QLoRA on LLaMA-7B with OASST1 (QLoRA paper recipe; shared flags in qlora_common.sh).
# Assumes: one CUDA GPU with bf16 (Ampere or newer), the hub id below or MODEL=/local/llama-7b,
#   and the MMLU prompt files in data/mmlu (python scripts/build_mmlu_data.py --output_dir data/mmlu)
#   or `--do_mmlu_eval False`.
# Launch: scripts/finetune_guanaco_7b.sh [qlora.py flags, which override the ones here]
# Effective batch: 1 x 16 gradient accumulation = 16; 1875 steps. lr 2e-4, LoRA dropout 0.1.
# GPU memory: ~6 GB for the 4-bit weights + adapters (paper, approx.), plus activations for training.
source "$(dirname "${BASH_SOURCE[0]}")/qlora_common.sh"
run_guanaco huggyllama/llama-7b guanaco-7b --learning_rate 0.0002 --lora_dropout 0.1 --save_steps 500 "$@"
