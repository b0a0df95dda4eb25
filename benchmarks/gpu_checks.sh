#!/usr/bin/env bash
# The GPU measurements of this project (and the CUDA path of qlora.py) in one command, on a
# machine with a CUDA GPU. Each stage writes <stage>.json and <stage>.log under $OUT (default:
# gpu_checks/ in the repository), plus machine.txt and summary.txt.
#
#   bash benchmarks/gpu_checks.sh [STAGE ...]      # default: tiny throughput recipe
#
# Stages:
#   tiny        qlora.py on the tiny model on CUDA, 30 steps with eval: the CUDA code path
#   throughput  benchmarks/train_throughput.py --preset gpu-7b (ours vs the reference's way)
#   recipe      scripts/finetune_guanaco_7b.sh for 20 steps on the random LLaMA-7B, its peak
#               memory next to scripts/estimate_memory.py's estimate of the same recipe
#   norms       ours against ours with --norms_in_fp32 on gpu-7b (that option's share)
#   packing     ours padding-free with flex_attention (and flash_attention_2 if flash-attn is
#               installed) against ours padded with sdpa, on gpu-7b
#   liger       ours with --use_liger_kernel against the reference's way (needs the
#               liger-kernel package); compare with throughput
#   fsdp        examples/accelerate/fsdp_qlora.yaml with one process on the tiny model
# The random LLaMA-7B (13 GB of bf16 safetensors) is built once in $WORK/llama-7b (default
# /tmp/gpu_checks) and reused by the 7B stages; each of them takes about 3-6 minutes.
# Wheels placed in .whl/ (e.g. the pinned transformers and peft, liger-kernel, for a machine
# without network access) are installed into /tmp/site first and take precedence.
# QLORA_FLAGS is appended to the tiny and fsdp runs: QLORA_FLAGS=--use_cpu tries the tiny stage
# on a machine without a GPU (accelerate's FSDP plugin refuses to start without an accelerator).
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO_ROOT/gpu_checks}"
WORK="${WORK:-/tmp/gpu_checks}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
LLAMA_7B="$WORK/llama-7b"
mkdir -p "$OUT" "$WORK"
cd "$REPO_ROOT" || exit 1

# The project from this checkout, installed or not (the GPU image has only its dependencies).
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

run_stage() {  # run_stage NAME COMMAND...: stdout+stderr to NAME.log, exit status and time to the summary
    local name=$1 start=$SECONDS status
    shift
    echo "== $name: $*"
    "$@" > "$OUT/$name.log" 2>&1
    status=$?
    echo "$name: exit $status after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    tail -n 3 "$OUT/$name.log"
}

tiny_model() {
    [ -f "$WORK/tiny/config.json" ] || "$PY" scripts/make_tiny_model.py "$WORK/tiny"
}

stage_tiny() {
    tiny_model || return 1
    rm -rf "$WORK/tiny-run"
    "$PY" qlora.py --model_name_or_path "$WORK/tiny" --output_dir "$WORK/tiny-run" --bf16 \
        --dataset qlorakit/sample_data/oasst1_sample.jsonl --dataset_format oasst1 --source_max_len 16 \
        --target_max_len 256 --lora_r 16 --learning_rate 0.002 --max_steps 30 --save_steps 15 \
        --per_device_train_batch_size 4 --gradient_accumulation_steps 1 --logging_steps 5 \
        --do_eval --eval_strategy steps --eval_steps 15 --eval_dataset_size 16 --dataloader_num_workers 0 \
        ${QLORA_FLAGS:-} && cp "$WORK/tiny-run/metrics.json" "$OUT/tiny.json"
}

stage_throughput() {
    "$PY" benchmarks/train_throughput.py --preset gpu-7b --model_dir "$LLAMA_7B" --json | tail -n 1 > "$OUT/throughput.json"
}

stage_norms() {
    "$PY" benchmarks/train_throughput.py --preset gpu-7b --model_dir "$LLAMA_7B" --ablate "--norms_in_fp32 True" \
        --json | tail -n 1 > "$OUT/norms.json"
}

stage_packing() {
    local attn
    rm -f "$OUT/packing.json"
    for attn in flex_attention flash_attention_2; do
        if [ "$attn" = flash_attention_2 ] && ! "$PY" -c "import flash_attn" 2> /dev/null; then
            echo "flash-attn not installed: $attn skipped"
            continue
        fi
        "$PY" benchmarks/train_throughput.py --preset gpu-7b --model_dir "$LLAMA_7B" \
            --ours_flags "--padding_free True --attn_implementation $attn" \
            --ablate "--padding_free False --attn_implementation sdpa" --json | tail -n 1 >> "$OUT/packing.json" || return 1
    done
}

stage_liger() {
    "$PY" benchmarks/train_throughput.py --preset gpu-7b --model_dir "$LLAMA_7B" --ours_flags "--use_liger_kernel True" \
        --json | tail -n 1 > "$OUT/liger.json"
}

stage_recipe() {
    [ -f "$LLAMA_7B/config.json" ] || PYTHONPATH="benchmarks:$PYTHONPATH" "$PY" -c "
import train_throughput; train_throughput.build_llama_7b('$LLAMA_7B')" || return 1
    rm -rf "$WORK/recipe"
    MODEL="$LLAMA_7B" OUTPUT_DIR="$WORK/recipe" PYTHON="$PY" bash scripts/finetune_guanaco_7b.sh \
        --dataset "$WORK/oasst1_x4.jsonl" --dataset_format oasst1 --max_steps 20 --save_strategy no \
        --do_eval False --eval_strategy no --do_mmlu_eval False --dataloader_num_workers 0 --logging_steps 5 \
        || return 1
    "$PY" scripts/estimate_memory.py --config llama-7b --bf16 --source_max_len 16 --target_max_len 512 \
        --lora_dropout 0.1 --json > "$WORK/estimate.json" || return 1
    "$PY" -c "
import json
metrics = json.load(open('$WORK/recipe/metrics.json'))
estimate = json.load(open('$WORK/estimate.json'))
allocated = estimate['total_mb'] - estimate['components_mb']['cuda_context_overhead']
print(json.dumps({'measured_peak_mb': metrics['train_peak_memory_mb'], 'train_runtime_s': metrics['train_runtime'],
                  'estimate_without_overhead_mb': round(allocated, 1), 'estimate': estimate}))" > "$OUT/recipe.json"
}

stage_fsdp() {
    tiny_model || return 1
    rm -rf "$WORK/fsdp-run"
    "$PY" -m accelerate.commands.launch --config_file examples/accelerate/fsdp_qlora.yaml --num_processes 1 \
        qlora.py --model_name_or_path "$WORK/tiny" --output_dir "$WORK/fsdp-run" --bf16 \
        --dataset qlorakit/sample_data/oasst1_sample.jsonl --dataset_format oasst1 --source_max_len 16 \
        --target_max_len 128 --max_steps 10 --save_steps 5 --per_device_train_batch_size 2 \
        --gradient_accumulation_steps 1 --do_eval False --eval_strategy no --dataloader_num_workers 0 \
        ${QLORA_FLAGS:-} && cp "$WORK/fsdp-run/metrics.json" "$OUT/fsdp.json"
}

# The recipe's data: the bundled OpenAssistant sample, four times (as the throughput benchmark).
for _ in 1 2 3 4; do cat qlorakit/sample_data/oasst1_sample.jsonl; done > "$WORK/oasst1_x4.jsonl"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import sys, torch, transformers, peft; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__)"
  date -u; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

for stage in "${@:-tiny throughput recipe}"; do
    for name in $stage; do
        case "$name" in
            tiny|throughput|recipe|norms|packing|liger|fsdp) run_stage "$name" "stage_$name" ;;
            *) echo "unknown stage: $name (tiny, throughput, recipe, norms, packing, liger, fsdp)" >&2; exit 2 ;;
        esac
    done
done
