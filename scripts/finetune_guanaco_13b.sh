#!/usr/bin/env bash
# Guanaco 13B: QLoRA on LLaMA-13B with OASST1 (QLoRA paper recipe; shared flags in qlora_common.sh).
# Assumes: one CUDA GPU with bf16, the hub id below or MODEL=/local/llama-13b, and the MMLU prompt
#   files in data/mmlu (scripts/build_mmlu_data.py) or `--do_mmlu_eval False`.
# Launch: scripts/finetune_guanaco_13b.sh [qlora.py flags, which override the ones here]
# Effective batch: 1 x 16 gradient accumulation = 16; 1875 steps. lr 2e-4, LoRA dropout 0.05.
# GPU memory: ~10 GB for the 4-bit weights + adapters (paper, approx.); fits a 24 GB GPU like 33B.
source "$(dirname "${BASH_SOURCE[0]}")/qlora_common.sh"
run_guanaco huggyllama/llama-13b guanaco-13b --learning_rate 0.0002 --lora_dropout 0.05 --save_steps 500 "$@"
