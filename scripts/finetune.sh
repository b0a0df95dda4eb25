#!/usr/bin/env bash
# A generic QLoRA run: Pythia-12B on Alpaca with the qlora.py defaults (NF4 + double quant,
# LoRA r 64 / alpha 16 on all linear layers, paged AdamW, constant schedule); the reference's
# scripts/finetune.sh. Start here for your own data: --dataset my.jsonl --dataset_format ...
# Assumes: one CUDA GPU; MODEL=... to train another base; the MMLU prompt files in data/mmlu
#   (scripts/build_mmlu_data.py) or `--do_mmlu_eval False`.
# Launch: scripts/finetune.sh [qlora.py flags, which override the ones here]
# Effective batch: 4 x 4 gradient accumulation = 16; 10000 steps.
# GPU memory: ~7 GB for the 4-bit Pythia-12B (estimate: 12B x 4 bits + 16-bit embeddings), plus activations of 4 x 512-token batches.
source "$(dirname "${BASH_SOURCE[0]}")/qlora_common.sh"
run_qlora \
    --model_name_or_path "${MODEL:-EleutherAI/pythia-12b}" \
    --output_dir "${OUTPUT_DIR:-$REPO_ROOT/output/pythia-12b-alpaca}" \
    --dataset alpaca \
    --do_train True --do_eval True --do_mmlu_eval True --mmlu_data_dir "$MMLU_DATA_DIR" \
    --source_max_len 384 --target_max_len 128 \
    --per_device_train_batch_size 4 --gradient_accumulation_steps 4 --per_device_eval_batch_size 4 \
    --max_steps 10000 --logging_steps 10 --optim paged_adamw_32bit --data_seed 42 \
    --save_strategy steps --save_steps 1000 --save_total_limit 40 \
    --eval_strategy steps --eval_steps 1000 --eval_dataset_size 1024 --max_eval_samples 1000 \
    "$@"
