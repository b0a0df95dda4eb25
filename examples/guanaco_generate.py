"""Answer one question with a 4-bit base model plus a trained QLoRA adapter (CPU or GPU).

The base is loaded as the adapter was trained (its base_loading.json); --bits, --quant_type,
--double_quant and --compute_dtype override that.

    python examples/guanaco_generate.py --model_name_or_path huggyllama/llama-7b \
        --adapter output/guanaco-7b/checkpoint-1875/adapter_model \
        --question "How do I keep basil alive indoors?"
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qlorakit.base_loading import add_base_loading_arguments, loading_overrides  # noqa: E402
from qlorakit.chat_format import cut_at_next_turn, format_guanaco_prompt  # noqa: E402
from qlorakit.model import load_for_inference  # noqa: E402


def generate_answer(model, tokenizer, question, max_new_tokens=128, temperature=0.7, top_p=0.9, seed=0):
    prompt = format_guanaco_prompt([(question, None)])
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=top_p if temperature > 0 else None,
            pad_token_id=tokenizer.pad_token_id,
        )
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return cut_at_next_turn(reply)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--adapter", help="adapter directory (checkpoint-N/adapter_model)")
    parser.add_argument("--question", default="What is a good way to start learning to cook?")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_p", type=float, default=0.9)
    add_base_loading_arguments(parser)
    args = parser.parse_args(argv)
    model, tokenizer = load_for_inference(args.model_name_or_path, adapter=args.adapter, **loading_overrides(args))
    answer = generate_answer(model, tokenizer, args.question, args.max_new_tokens, args.temperature, args.top_p)
    print(f"{format_guanaco_prompt([(args.question, answer)])}")


if __name__ == "__main__":
    main()
