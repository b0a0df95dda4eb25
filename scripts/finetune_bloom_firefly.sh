#!/usr/bin/env bash
# BLOOM-7b1 finetuned on Firefly-style conversations (e.g. Firefly's conversion of MOSS-003's
# moss-003-sft-no-tools), laid out as <s>q1</s>a1</s>q2</s>a2</s>... (--chat_template firefly) with
# the loss on the answers and their closing </s>. Hyperparameters follow the Firefly project's
# QLoRA settings for bloom-7b1: NF4 + double quant, LoRA r 64 / alpha 16 / dropout 0.05 on every
# linear layer, lr 2e-4 with 3000 warmup steps then constant, effective batch 16 (1 x 16),
# conversations up to 1024 tokens, one epoch, max grad norm 0.3, paged AdamW 32-bit, seed 42.
# They trained in fp16; here compute is bf16 (no loss scaling; add --bf16 False --fp16 on GPUs without bf16).
# Assumes: one CUDA GPU; DATASET=path/to/firefly.jsonl (rows {"conversation": [{"human", "assistant"}, ...]}),
# or MOSS-003's own moss-003-sft-no-tools.jsonl as published (read as format moss; meta_instruction unused).
# Launch: DATASET=moss-003-sft-no-tools.jsonl scripts/finetune_bloom_firefly.sh [qlora.py flags, which win]
# Check the layout and the lengths first: add --preview_data 2.
source "$(dirname "${BASH_SOURCE[0]}")/qlora_common.sh"
run_qlora \
    --model_name_or_path "${MODEL:-bigscience/bloom-7b1}" \
    --output_dir "${OUTPUT_DIR:-$REPO_ROOT/output/bloom-7b1-firefly}" \
    --dataset "${DATASET:-data/moss-003-sft-no-tools.jsonl}" --chat_template firefly --max_seq_len 1024 \
    --bits 4 --quant_type nf4 --double_quant --bf16 \
    --lora_r 64 --lora_alpha 16 --lora_dropout 0.05 --lora_modules all \
    --learning_rate 2e-4 --lr_scheduler_type constant_with_warmup --warmup_steps 3000 \
    --per_device_train_batch_size 1 --gradient_accumulation_steps 16 --num_train_epochs 1 \
    --optim paged_adamw_32bit --max_grad_norm 0.3 --weight_decay 0.0 --gradient_checkpointing \
    --seed 42 --logging_steps 300 --save_strategy steps --save_steps 500 --save_total_limit 1 \
    --do_train True --do_eval False --eval_strategy no --do_mmlu_eval False \
    "$@"
