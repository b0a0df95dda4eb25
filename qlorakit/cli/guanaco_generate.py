"""Answer one question with a 4-bit base model plus a trained QLoRA adapter (CPU or GPU).

The base is loaded as the adapter was trained (its base_loading.json); --bits, --quant_type,
--double_quant and --compute_dtype override that. The prompt is rendered with the chat template the
adapter was trained with (its prompt_template.json; guanaco without one) unless --chat_template names another.

    qlora-guanaco-generate --model_name_or_path huggyllama/llama-7b \
        --adapter output/guanaco-7b/checkpoint-1875/adapter_model \
        --question "How do I keep basil alive indoors?"
"""

import argparse

import torch

from qlorakit import chat_data
from qlorakit.adapter_paths import add_adapter_argument
from qlorakit.base_loading import add_base_loading_arguments, loading_overrides
from qlorakit.chat_format import add_tools_argument, template_choice
from qlorakit.errors import run_main
from qlorakit.generation import (add_generation_arguments, check_generation_arguments, inference_generation_config,
                                 reply_text)
from qlorakit.inference_model import load_for_inference, load_inference_tokenizer
from qlorakit.trained_template import inference_template


def build_question_prompt(tokenizer, template, question, tools=None):
    """The prompt for a reply to ``question``, rendered by the chat template training used (with the
    tool definitions of --tools, if any)."""
    return chat_data.render(tokenizer, template, [{"role": "user", "content": question}], add_generation_prompt=True,
                            tools=tools)


def generate_answer(model, tokenizer, prompt, generation_config, seed=0):
    """One reply to ``prompt``, tokenized as training tokenized it, cut before the first stop string
    of generation_config (where generation stopped)."""
    input_ids = torch.tensor([chat_data.encode_text(tokenizer, prompt)], device=model.device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(**inputs, generation_config=generation_config, tokenizer=tokenizer)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return reply_text(reply, generation_config)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", required=True)
    add_adapter_argument(parser, absent="none: the base alone")
    parser.add_argument("--question", default="What is a good way to start learning to cook?")
    parser.add_argument("--chat_template", type=template_choice,
                        help="guanaco, tokenizer or a .jinja file, as given to qlora.py (default: the adapter's "
                             "training template, else guanaco)")
    add_tools_argument(parser)
    add_generation_arguments(parser, max_new_tokens=128)
    add_base_loading_arguments(parser)
    args = parser.parse_args(argv)
    check_generation_arguments(parser, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    tokenizer = load_inference_tokenizer(args.model_name_or_path, args.adapter)
    _, template = inference_template(args.chat_template, tokenizer, args.adapter, "--chat_template", default="guanaco",
                                     tools=args.tools)
    model, tokenizer = load_for_inference(args.model_name_or_path, adapter=args.adapter, tokenizer=tokenizer,
                                          **loading_overrides(args))
    generation_config = inference_generation_config(args, tokenizer, template)
    prompt = build_question_prompt(tokenizer, template, args.question, args.tools)
    print(f"{prompt}{generate_answer(model, tokenizer, prompt, generation_config, args.seed)}")


def console_main():
    """The ``qlora-guanaco-generate`` command."""
    return run_main(main)
