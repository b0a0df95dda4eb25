#!/usr/bin/env bash
# Guanaco 65B: QLoRA on LLaMA-65B with OASST1 (QLoRA paper recipe; shared flags in qlora_common.sh).
# Assumes: one CUDA GPU with bf16 and 48 GB or more, the hub id below or MODEL=/local/llama-65b,
#   and the MMLU prompt files in data/mmlu (scripts/build_mmlu_data.py) or `--do_mmlu_eval False`.
# Launch: scripts/finetune_guanaco_65b.sh [qlora.py flags, which override the ones here]
# Effective batch: 1 x 16 gradient accumulation = 16; 1875 steps. lr 1e-4, LoRA dropout 0.05.
# GPU memory: ~41 GB for the 4-bit weights + adapters (paper, approx.); the paper trains it on one 48 GB GPU.
source "$(dirname "${BASH_SOURCE[0]}")/qlora_common.sh"
run_guanaco huggyllama/llama-65b guanaco-65b --learning_rate 0.0001 --lora_dropout 0.05 --save_steps 200 "$@"
