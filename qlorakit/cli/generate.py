"""Answer a questions file with a local base model plus an optional QLoRA adapter.

Assumes a causal LM checkpoint (hub name or directory) and, optionally, an adapter directory
written by qlora.py; loading goes through qlorakit.inference_model.load_for_inference, which rebuilds the
base as the adapter was trained (its base_loading.json: bits, NF4/FP4, double quant, compute
dtype; --bits/--quant-type/--double-quant/--compute-dtype override it; 4-bit NF4 without one). Memory: the 4-bit base (~5 GB for a 7B
model, ~40 GB for 65B) plus activations for --batch-size prompts. Launch from any directory:

    python eval/generate.py --model_name_or_path huggyllama/llama-7b \
        --adapter output/guanaco-7b/checkpoint-1875/adapter_model \
        -q vicuna_questions.jsonl -o generations/7b-guanaco-vicuna-generations-topp0.9-temp0.7.jsonl

Prompts are rendered by the chat template qlora.py trains chat data with (qlorakit.chat_data):
the one the adapter was trained with (its prompt_template.json), else the Guanaco markers
("### Human: ...### Assistant:"); --prompt-format guanaco, --prompt-format tokenizer
for the tokenizer's own (tokenizer:NAME for one of its named templates), or --prompt-format PATH.jinja;
--tools FILE.json hands the template tool schemas; tokens are counted as in training. Sampling defaults to the paper's
top_p 0.9 / temperature 0.7; the generation flags (qlorakit.generation) are those of every inference
command. Rows are written in the reference's generation format (question_id, text, category, prompt,
generation: the raw continuation, generation_truncated: the reply, cut before the first stop string),
appended batch by batch; a rerun skips questions already answered. The settings the answers are
generated with (model, adapter, prompt format, generation flags) are saved beside the output as
NAME.settings.json, and a rerun with other settings is refused: one file never mixes the answers
of two models.
"""

import argparse
import logging
import os
import sys

from qlorakit import chat_data, run_lock
from qlorakit.adapter_paths import add_adapter_argument
from qlorakit.base_loading import add_base_loading_arguments, base_name, loading_overrides
from qlorakit.chat_format import add_tools_argument, template_choice
from qlorakit.errors import InputError, run_main
from qlorakit.generation import (add_generation_arguments, check_generation_arguments, generation_settings,
                                 inference_generation_config, reply_text)
from qlorakit.jsonl import JsonlAppender, appended_file, load_done_keys, read_json_object, write_json_atomic
from qlorakit.run_settings import changed_settings
from qlorakit.questions import load_questions
from qlorakit.trained_template import inference_template

logger = logging.getLogger("generate")

OLD_SPELLINGS = {"chat-template": "tokenizer"}


def prompt_format(value):
    """A named format, or a .jinja chat template file that exists; the old spelling chat-template is
    taken as tokenizer, said in one line."""
    if value in OLD_SPELLINGS:
        print(f"note: --prompt-format {value} is spelt {OLD_SPELLINGS[value]} now (as qlora.py --chat_template)",
              file=sys.stderr)
        return OLD_SPELLINGS[value]
    return template_choice(value)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", "--model", dest="model_name_or_path", required=True)
    add_adapter_argument(parser, absent="none: the base alone")
    parser.add_argument("-q", "--question-file", required=True)
    parser.add_argument("-o", "--output", required=True, type=appended_file, help="generations file (JSONL, appended)")
    parser.add_argument("--prompt-format", type=prompt_format,
                        help="guanaco, tokenizer (the tokenizer's own template) or a .jinja file (default: the "
                             "adapter's training template, else guanaco)")
    parser.add_argument("--system-prompt", default="", help="text put before the first turn (guanaco format)")
    add_tools_argument(parser)
    parser.add_argument("--batch-size", type=int, default=8)
    add_generation_arguments(parser, max_new_tokens=1024)
    parser.add_argument("--trust-remote-code", action="store_true")
    add_base_loading_arguments(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    check_generation_arguments(parser, args)
    return args


def prompt_template(tokenizer, prompt_format):
    """The chat template of --prompt-format (a bad template file is a ConversationError: one line)."""
    return chat_data.resolve_chat_template(prompt_format, tokenizer)[0]


def answer_settings(args):
    """What decides the answers a run writes: the model and adapter, how prompts are rendered, the
    generation flags and the base loading, as JSON values."""
    return {"model_name_or_path": base_name(args.model_name_or_path),
            "adapter": base_name(args.adapter) if args.adapter else None,
            "prompt_format": args.prompt_format, "system_prompt": args.system_prompt, "tools": args.tools,
            "stop_strings": args.stop_strings, "seed": args.seed, **generation_settings(args),
            **loading_overrides(args)}


def settings_path(output):
    """NAME.settings.json beside NAME.jsonl: not a .jsonl file, so no reader of answer files lists it."""
    return os.path.splitext(output)[0] + ".settings.json"


def check_answer_settings(output, settings, answered):
    """The answers already in `output` (`answered`: how many, for any question) must come from the
    same settings as the ones to add; a new output records them. A file from before the record
    existed goes on, with a warning."""
    path = settings_path(output)
    if not answered:
        write_json_atomic(path, settings)
        return
    if not os.path.isfile(path):
        logger.warning("%s holds %d answers and no record of how they were generated (%s): adding the rest "
                       "with these settings", output, answered, path)
        return
    changed = changed_settings(read_json_object(path), settings)
    if changed:
        raise InputError(f"{output} holds {answered} answers generated with other settings ({', '.join(changed)}): "
                         "pass another -o, or remove the file to answer every question again")


def build_prompt(question_text, tokenizer, prompt_format, system_prompt="", template=None, tools=None):
    """The model input for one question. OA questions already hold a whole "### Human: ...
    ### Assistant:" conversation and are used as they are in the Guanaco format. template: the
    resolved --prompt-format, when the caller builds many prompts; tools: those of --tools."""
    from qlorakit.chat_format import HUMAN

    if prompt_format == "guanaco" and question_text.lstrip().startswith(HUMAN):
        return f"{system_prompt} {question_text}" if system_prompt else question_text
    template = template or prompt_template(tokenizer, prompt_format)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": question_text})
    return chat_data.render(tokenizer, template, messages, add_generation_prompt=True, tools=tools)


def generate_batch(model, tokenizer, prompts, generation_config):
    """Raw continuations of a batch of prompts (the tokenizer pads on the left); each stops at eos
    or at a stop string of generation_config, which is left in."""
    import torch

    from qlorakit.chat_data import encode_text

    encoded = {"input_ids": [encode_text(tokenizer, prompt) for prompt in prompts]}
    inputs = tokenizer.pad(encoded, return_tensors="pt").to(model.device)
    with torch.no_grad():
        output = model.generate(**inputs, generation_config=generation_config, tokenizer=tokenizer)
    return tokenizer.batch_decode(new_tokens_of(model, output, inputs["input_ids"].shape[1]), skip_special_tokens=True)


def new_tokens_of(model, output, prompt_length):
    """The generated tokens alone: a decoder-only model returns (B, prompt + new) after the padded
    prompts; an encoder-decoder model's output holds only the decoder's tokens, all of them new."""
    return output if model.config.is_encoder_decoder else output[:, prompt_length:]


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    questions = load_questions(args.question_file)
    with run_lock.appending(args.output, "pass another -o"):
        return answer_missing(args, questions)


def answer_missing(args, questions):
    """Generate the answers `args.output` does not hold yet and append them."""
    done = load_done_keys(args.output, lambda row: str(row.get("question_id")))
    todo = [q for q in questions if str(q.question_id) not in done]
    check_answer_settings(args.output, answer_settings(args), len(done))
    logger.info("%s: %d questions, %d to answer", args.output, len(questions), len(todo))
    if not todo:
        return 0

    import torch
    from tqdm import tqdm

    from qlorakit.inference_model import load_for_inference, load_inference_tokenizer

    tokenizer = load_inference_tokenizer(args.model_name_or_path, args.adapter, args.trust_remote_code)
    prompt_name, template = inference_template(args.prompt_format, tokenizer, args.adapter, "--prompt-format",
                                               default="guanaco", tools=args.tools)
    model, tokenizer = load_for_inference(args.model_name_or_path, adapter=args.adapter,
                                          trust_remote_code=args.trust_remote_code, tokenizer=tokenizer,
                                          **loading_overrides(args))
    generation_config = inference_generation_config(args, tokenizer, template)
    torch.manual_seed(args.seed)
    with JsonlAppender(args.output) as writer, tqdm(total=len(todo), desc="generating") as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start:start + args.batch_size]
            prompts = [build_prompt(q.text, tokenizer, prompt_name, args.system_prompt, template, args.tools)
                       for q in batch]
            generations = generate_batch(model, tokenizer, prompts, generation_config)
            for question, prompt, generation in zip(batch, prompts, generations):
                writer.write({"question_id": question.question_id, "text": question.text,
                              "category": question.category, "prompt": prompt, "generation": generation,
                              "generation_truncated": reply_text(generation, generation_config)})
            bar.update(len(batch))
    return 0


def console_main():
    """The ``qlora-generate`` command."""
    return run_main(main)
