"""The demo's claim, checked end to end: training through the 4-bit base + LoRA teaches the tiny
model the demo's replies, and the saved adapter, reloaded on a fresh base, gives them back.

A broken loss mask, gradient path, adapter save or adapter load all make it fail."""

import json
import os

import torch
from conftest import REPO_ROOT, run_python

from qlorakit import chat_data
from qlorakit.chat_format import cut_at_next_turn
from qlorakit.cli.guanaco_generate import build_question_prompt
from qlorakit.inference_model import load_for_inference

DEMO_CONFIG = os.path.join(REPO_ROOT, "examples", "configs", "tiny_demo.yaml")
DEMO_FACTS = os.path.join(REPO_ROOT, "qlorakit", "sample_data", "demo_facts.jsonl")


def greedy_reply(model, tokenizer, question):
    prompt = build_question_prompt(tokenizer, chat_data.GUANACO_TEMPLATE, question)
    input_ids = torch.tensor([chat_data.encode_text(tokenizer, prompt)])
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=12,
                                do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return cut_at_next_turn(tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True))


def test_the_demo_run_teaches_its_replies_and_the_reloaded_adapter_gives_them_back(tiny_model_dir, tmp_path):
    run_python(["qlora.py", DEMO_CONFIG, "--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path)])
    with open(DEMO_FACTS, encoding="utf-8") as handle:
        pairs = [[turn["content"] for turn in json.loads(line)["messages"]] for line in handle]
    adapter = os.path.join(tmp_path, "checkpoint-40", "adapter_model")
    model, tokenizer = load_for_inference(tiny_model_dir, adapter=adapter)
    replies = [greedy_reply(model, tokenizer, question) for question, _ in pairs]
    assert replies == [answer for _, answer in pairs]
