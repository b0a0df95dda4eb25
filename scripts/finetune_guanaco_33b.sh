#!/usr/bin/env bash
# Guanaco 33B: QLoRA on LLaMA-30B ("33B") with OASST1 (QLoRA paper recipe; shared flags in qlora_common.sh).
# Assumes: one CUDA GPU with bf16, the hub id below or MODEL=/local/llama-30b, and the MMLU prompt
#   files in data/mmlu (scripts/build_mmlu_data.py) or `--do_mmlu_eval False`.
# Launch: scripts/finetune_guanaco_33b.sh [qlora.py flags, which override the ones here]
# Effective batch: 1 x 16 gradient accumulation = 16; 1875 steps. lr 1e-4, LoRA dropout 0.05.
# GPU memory: ~21 GB for the 4-bit weights + adapters (paper, approx.); the paper trains it on one 24 GB GPU.
source "$(dirname "${BASH_SOURCE[0]}")/qlora_common.sh"
run_guanaco huggyllama/llama-30b guanaco-33b --learning_rate 0.0001 --lora_dropout 0.05 --save_steps 200 "$@"
