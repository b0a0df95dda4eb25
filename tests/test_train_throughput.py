"""The throughput benchmark: its reference-style pipeline feeds the model the same tokens as ours,
and its CLI runs and reports."""

import json
import math

from conftest import run_python

import train_throughput

from qlorakit.collate import CausalLMCollator
from qlorakit.data import tokenize_rows
from qlorakit.tokenizer import load_tokenizer


def test_reference_style_batches_hold_the_same_tokens_and_labels(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = [{"input": "", "output": "### Human: Hi there### Assistant: Hello, how can I help?"},
            {"input": "Name a colour.", "output": "Blue."}]
    reference = train_throughput.ReferenceStyleCollator(tokenizer, 16, 512)(rows)
    tokenized = tokenize_rows({"input": [r["input"] for r in rows], "output": [r["output"] for r in rows]},
                              tokenizer, 16, 512)
    features = [{"source_ids": s, "target_ids": t} for s, t in zip(tokenized["source_ids"], tokenized["target_ids"])]
    ours = CausalLMCollator(tokenizer.pad_token_id)(features)
    assert reference["input_ids"].tolist() == ours["input_ids"].tolist()
    assert reference["labels"].tolist() == ours["labels"].tolist()
    assert reference["attention_mask"].long().tolist() == ours["attention_mask"].tolist()



def test_ablation_runs_ours_twice_and_reports_one_json_line(tiny_model_dir):
    # --model_dir: tiny_model_dir is the model the cpu-tiny preset would build (make_tiny_model's defaults).
    result = run_python(["benchmarks/train_throughput.py", "--preset", "cpu-tiny", "--steps", "2", "--ours_batch", "8",
                         "--ablate", "--norms_in_fp32 True", "--json", "--model_dir", tiny_model_dir])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ablate"] == "--norms_in_fp32 True" and len(report["speedups"]) == 1
    for name in ("ours", "baseline"):
        assert (report[name]["micro_batch"], report[name]["accumulation"], report[name]["steps"]) == (8, 2, 2)
        assert report[name]["tokens_per_s"] > 0 and math.isfinite(report[name]["final_loss"])
    assert report["speedup"] == round(report["ours"]["tokens_per_s"] / report["baseline"]["tokens_per_s"], 2)
