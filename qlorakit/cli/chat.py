"""Chat in the terminal with a base model plus a QLoRA adapter, token by token.

    qlora-chat --model_name_or_path huggyllama/llama-7b \
        --adapter output/guanaco-7b/checkpoint-1875/adapter_model
    printf 'Name a fruit.\\nWhat colour is it?\\n' | qlora-chat --model_name_or_path ...

Every reply is generated from the whole conversation so far, rendered by the chat template qlora.py
trains chat data with: the one the adapter was trained with (its prompt_template.json), else the
tokenizer's own if it has one, else the Guanaco markers "### Human: ...### Assistant: ..."; --chat_template
names another (guanaco, tokenizer, tokenizer:NAME or a .jinja file), and --tools FILE.json hands it tool
schemas. So the adapter is prompted the way it was trained;
the oldest turns are dropped when the conversation outgrows the model's context. A reply ends at eos
or at a stop string (by default the template's turn markers; the flags of qlorakit.generation). Input
is read line by line, so piped input works; an empty line, "exit" or end of input (Ctrl-D) ends the
chat. The "### Human:" prompt marker is
printed only when reading from a terminal. The base is loaded as the adapter was trained (its
base_loading.json); --bits, --quant_type, --double_quant and --compute_dtype override that.
"""

import argparse
import json
import sys
from threading import Thread

import torch
from transformers import TextIteratorStreamer

from qlorakit import chat_data
from qlorakit.adapter_paths import add_adapter_argument
from qlorakit.base_loading import add_base_loading_arguments, loading_overrides
from qlorakit.chat_format import ASSISTANT, HUMAN, add_tools_argument, template_choice
from qlorakit.errors import run_main
from qlorakit.generation import (add_generation_arguments, check_generation_arguments, cut_at_stop_strings,
                                 held_back_length, inference_generation_config, stop_strings_of)
from qlorakit.trained_template import inference_template

EXIT_WORDS = ("", "exit", "quit")


def to_messages(history, message):
    """The earlier (human, assistant) turns and the new message as chat messages.

    >>> to_messages([("Hi", "Hello!")], "How are you?")  # doctest: +NORMALIZE_WHITESPACE
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'},
     {'role': 'user', 'content': 'How are you?'}]
    """
    turns = [({"role": "user", "content": human}, {"role": "assistant", "content": reply}) for human, reply in history]
    return [message for turn in turns for message in turn] + [{"role": "user", "content": message}]


def build_chat_prompt(tokenizer, template, history, message, tools=None):
    """The prompt for the reply to `message`, rendered as training rendered conversations (with the
    tool definitions of --tools, if any)."""
    return chat_data.render(tokenizer, template, to_messages(history, message), add_generation_prompt=True,
                            tools=tools)


def fit_history(history, message, prompt_length, budget):
    """The newest turns of history whose prompt (with `message`) takes at most `budget` tokens;
    prompt_length measures the prompt of a list of messages.

    >>> fit_history([("a", "b"), ("c", "d")], "e", prompt_length=len, budget=4)
    [('c', 'd')]
    """
    while history and prompt_length(to_messages(history, message)) > budget:
        history = history[1:]
    return history


def visible_reply(text, stop_strings, final=False):
    """What of a reply streamed so far can be shown: the text before any stop string, stripped.

    While streaming, a tail that may still become a stop string ("###") or trailing white space is
    held back, so that nothing shown ever has to be taken back.

    >>> visible_reply(" Fine. ###", ["### Human:"])
    'Fine.'
    >>> visible_reply(" Fine. ### Human: And you?", ["### Human:"])
    'Fine.'
    >>> visible_reply(" Use # for comments.", ["### Human:"], final=True)
    'Use # for comments.'
    """
    text = cut_at_stop_strings(text, stop_strings).strip()
    return text if final else text[:len(text) - held_back_length(text, stop_strings)].strip()


def stream_reply(pieces, write, stop_strings):
    """Write the visible part of a reply as its pieces arrive; return the whole reply."""
    text, shown = "", ""
    for piece in pieces:
        text += piece
        now = visible_reply(text, stop_strings)
        if now.startswith(shown) and len(now) > len(shown):
            write(now[len(shown):])
            shown = now
    reply = visible_reply(text, stop_strings, final=True)
    write(reply[len(shown):] if reply.startswith(shown) else "")
    return reply


def generate_pieces(model, tokenizer, prompt, generation_config):
    """Yield the decoded text of a reply while model.generate runs in a background thread; it stops
    at eos or at a stop string of generation_config."""
    input_ids = torch.tensor([chat_data.encode_text(tokenizer, prompt)], device=model.device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors = []

    def run():
        try:
            with torch.no_grad():
                model.generate(**inputs, streamer=streamer, generation_config=generation_config, tokenizer=tokenizer)
        except Exception as error:  # re-raised below, after the streamer is released
            errors.append(error)
            streamer.end()

    thread = Thread(target=run, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


def read_message(interactive):
    """The next line typed or piped in, or None at end of input."""
    if interactive:
        print(f"{HUMAN} ", end="", flush=True)
    line = sys.stdin.readline()
    return line.strip() if line else None


def chat(model, tokenizer, template, args):
    interactive = sys.stdin.isatty()
    budget = getattr(model.config, "max_position_embeddings", 2048) - args.max_new_tokens
    prompt_length = lambda messages: len(chat_data.encode_text(  # noqa: E731
        tokenizer, chat_data.render(tokenizer, template, messages, add_generation_prompt=True, tools=args.tools)))
    generation_config = inference_generation_config(args, tokenizer, template)
    history = []
    while (message := read_message(interactive)) is not None and message.lower() not in EXIT_WORDS:
        history = fit_history(history, message, prompt_length, budget)
        prompt = build_chat_prompt(tokenizer, template, history, message, args.tools)
        if args.show_prompt:
            print(f"prompt: {json.dumps(prompt)}", file=sys.stderr, flush=True)
        if interactive:
            print(f"{ASSISTANT} ", end="", flush=True)
        write = lambda text: print(text, end="", flush=True)  # noqa: E731
        pieces = generate_pieces(model, tokenizer, prompt, generation_config)
        reply = stream_reply(pieces, write, stop_strings_of(generation_config))
        print(flush=True)
        history.append((message, reply))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", required=True, help="hub id or directory of the base model")
    add_adapter_argument(parser, absent="none: the base alone")
    add_generation_arguments(parser, max_new_tokens=256)
    parser.add_argument("--show_prompt", action="store_true", help="print each full prompt to stderr (one JSON string a line)")
    parser.add_argument("--chat_template", type=template_choice,
                        help="guanaco, tokenizer or a .jinja file, as given to qlora.py (default: the adapter's "
                             "training template, else the tokenizer's own if it has one, else guanaco)")
    add_tools_argument(parser)
    add_base_loading_arguments(parser)
    args = parser.parse_args(argv)
    check_generation_arguments(parser, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    from qlorakit.inference_model import load_for_inference, load_inference_tokenizer  # heavy: after the flags

    torch.manual_seed(args.seed)
    tokenizer = load_inference_tokenizer(args.model_name_or_path, args.adapter)
    _, template = inference_template(args.chat_template, tokenizer, args.adapter, "--chat_template", tools=args.tools)
    model, tokenizer = load_for_inference(args.model_name_or_path, adapter=args.adapter, tokenizer=tokenizer,
                                          **loading_overrides(args))
    try:
        chat(model, tokenizer, template, args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    return 0


def console_main():
    """The ``qlora-chat`` command."""
    return run_main(main)
