#!/usr/bin/env bash
# Guanaco on Llama-2-7B: the 7B recipe on the gated meta-llama/Llama-2-7b-hf (shared flags in qlora_common.sh).
# Assumes: one CUDA GPU with bf16, access to the gated repo (`hf auth login`; sent by
#   --use_auth_token) or MODEL=/local/Llama-2-7b-hf, and the MMLU prompt files in data/mmlu
#   (scripts/build_mmlu_data.py) or `--do_mmlu_eval False`.
# Launch: scripts/finetune_llama2_guanaco_7b.sh [qlora.py flags, which override the ones here]
# Effective batch: 1 x 16 gradient accumulation = 16; 1875 steps. lr 2e-4, LoRA dropout 0.1.
# GPU memory: as Guanaco 7B, ~6 GB for the 4-bit weights + adapters (paper, approx.), plus activations.
source "$(dirname "${BASH_SOURCE[0]}")/qlora_common.sh"
run_guanaco meta-llama/Llama-2-7b-hf llama-2-guanaco-7b --use_auth_token --learning_rate 0.0002 --lora_dropout 0.1 --save_steps 500 "$@"
