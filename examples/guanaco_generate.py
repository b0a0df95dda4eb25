"""Answer one question with a 4-bit base model plus a trained QLoRA adapter (CPU or GPU).

The base is loaded as the adapter was trained (its base_loading.json); --bits, --quant_type,
--double_quant and --compute_dtype override that.

    python examples/guanaco_generate.py --model_name_or_path huggyllama/llama-7b \
        --adapter output/guanaco-7b/checkpoint-1875/adapter_model \
        --question "How do I keep basil alive indoors?"
"""

import argparse
import sys

import torch

from qlorakit.base_loading import add_adapter_argument, add_base_loading_arguments, loading_overrides
from qlorakit.chat_format import cut_at_next_turn, format_guanaco_prompt
from qlorakit.errors import run_main
from qlorakit.generation import add_sampling_arguments, check_sampling_arguments, sampling_kwargs
from qlorakit.model import load_for_inference


def generate_answer(model, tokenizer, question, args):
    """One sampled Guanaco reply to ``question`` (sampling flags in ``args``)."""
    prompt = format_guanaco_prompt([(question, None)])
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        output = model.generate(**inputs, pad_token_id=tokenizer.pad_token_id, **sampling_kwargs(args))
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return cut_at_next_turn(reply)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", required=True)
    add_adapter_argument(parser, absent="none: the base alone")
    parser.add_argument("--question", default="What is a good way to start learning to cook?")
    add_sampling_arguments(parser, max_new_tokens=128)
    add_base_loading_arguments(parser)
    args = parser.parse_args(argv)
    check_sampling_arguments(parser, args)
    model, tokenizer = load_for_inference(args.model_name_or_path, adapter=args.adapter, **loading_overrides(args))
    answer = generate_answer(model, tokenizer, args.question, args)
    print(f"{format_guanaco_prompt([(args.question, answer)])}")


if __name__ == "__main__":
    sys.exit(run_main(main))
