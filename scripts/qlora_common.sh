# Shared by the recipe scripts in this folder (sourced, not run): where the repository is, how
# qlora.py is launched, and the flags every Guanaco run of the QLoRA paper shares.
#
# Launching: `${PYTHON:-python} <repo>/qlora.py FLAGS... "$@"`. The script's own flags come first
# and the caller's "$@" last, so a flag given on the command line wins (argparse keeps the last
# value). PYTHON may hold a whole launcher, e.g. PYTHON="torchrun --nproc_per_node 2".
# Nothing here changes directory: relative paths in your flags stay relative to where you are.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Built once with `python scripts/build_mmlu_data.py --output_dir data/mmlu` (MMLU is not shipped).
MMLU_DATA_DIR="${MMLU_DATA_DIR:-$REPO_ROOT/data/mmlu}"

run_qlora() {
    # shellcheck disable=SC2086  # PYTHON is split on purpose: it may be "torchrun --nproc_per_node 2"
    exec ${PYTHON:-python} "$REPO_ROOT/qlora.py" "$@"
}

# The Guanaco recipe (QLoRA paper, arXiv 2305.14314, section 5 and appendix B; the reference's
# scripts/finetune_guanaco_*.sh): OASST1, NF4 + double quant with bf16 compute, LoRA r 64 /
# alpha 16 on every linear layer, effective batch 16 (1 x 16), 1875 steps, constant schedule.
# Each size passes what differs (base model, learning rate, LoRA dropout) to run_guanaco.
GUANACO_FLAGS=(
    --dataset oasst1
    --source_max_len 16
    --target_max_len 512
    --bits 4
    --quant_type nf4
    --double_quant
    --bf16
    --lora_r 64
    --lora_alpha 16
    --lora_modules all
    --per_device_train_batch_size 1
    --gradient_accumulation_steps 16
    --max_steps 1875
    --lr_scheduler_type constant
    --warmup_ratio 0.03
    --adam_beta2 0.999
    --max_grad_norm 0.3
    --weight_decay 0.0
    --gradient_checkpointing
    --group_by_length
    --remove_unused_columns False
    --seed 0
    --data_seed 42
    --do_train
    --do_eval
    --eval_strategy steps
    --eval_steps 187
    --eval_dataset_size 1024
    --max_eval_samples 1000
    --per_device_eval_batch_size 1
    --max_new_tokens 32
    --do_mmlu_eval
    --mmlu_data_dir "$MMLU_DATA_DIR"
    --logging_strategy steps
    --logging_steps 10
    --save_strategy steps
    --save_total_limit 40
    --dataloader_num_workers 3
)

# run_guanaco HUB_ID RUN_NAME FLAGS... : MODEL and OUTPUT_DIR in the environment override the
# base model and output/RUN_NAME; FLAGS (the size's own, then the caller's) come last.
run_guanaco() {
    local model="${MODEL:-$1}" output_dir="${OUTPUT_DIR:-$REPO_ROOT/output/$2}"
    shift 2
    run_qlora --model_name_or_path "$model" --output_dir "$output_dir" "${GUANACO_FLAGS[@]}" "$@"
}
