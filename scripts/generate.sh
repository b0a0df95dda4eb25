#!/usr/bin/env bash
# Predict with generation: qlora.py without training writes OUTPUT_DIR/predictions.jsonl (each
# eval row plus `prediction` and `prediction_with_input`); the reference's scripts/generate.sh.
# With OUTPUT_DIR (or --output_dir) pointing at a finished run of a finetune script, the newest
# checkpoint's adapter is loaded first, so the predictions are the trained model's; otherwise the
# base model answers (a fresh LoRA adapter starts as a no-op).
# Assumes: one CUDA GPU; MODEL=... for another base (the one the adapter was trained on).
# Launch: OUTPUT_DIR=output/guanaco-7b MODEL=huggyllama/llama-7b scripts/generate.sh --dataset oasst1
# Batch: 4 prompts per generate call; sampling with top_p 0.9, up to 64 new tokens.
# GPU memory: the 4-bit base (~7 GB for Pythia-12B) plus the KV cache of 4 x (512 + 64) tokens.
source "$(dirname "${BASH_SOURCE[0]}")/qlora_common.sh"
run_qlora \
    --model_name_or_path "${MODEL:-EleutherAI/pythia-12b}" \
    --output_dir "${OUTPUT_DIR:-$REPO_ROOT/output}" \
    --do_train False --do_eval False --do_predict True --predict_with_generate \
    --dataset alpaca --source_max_len 512 --target_max_len 128 --per_device_eval_batch_size 4 \
    --max_new_tokens 64 --do_sample --top_p 0.9 --num_beams 1 \
    "$@"
