"""Chat in the terminal with a base model plus a QLoRA adapter, token by token.

    python examples/chat.py --model_name_or_path huggyllama/llama-7b \
        --adapter output/guanaco-7b/checkpoint-1875/adapter_model
    printf 'Name a fruit.\\nWhat colour is it?\\n' | python examples/chat.py --model_name_or_path ...

Every reply is generated from the whole conversation so far, written in the Guanaco turn format the
adapter was trained on ("### Human: ...### Assistant: ..."); the oldest turns are dropped when the
conversation outgrows the model's context. Input is read line by line, so piped input works; an
empty line, "exit" or end of input (Ctrl-D) ends the chat. The "### Human:" prompt marker is
printed only when reading from a terminal. The base is loaded as the adapter was trained (its
base_loading.json); --bits, --quant_type, --double_quant and --compute_dtype override that.
"""

import argparse
import json
import os
import sys
from threading import Thread

import torch
from transformers import TextIteratorStreamer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qlorakit.base_loading import add_base_loading_arguments, loading_overrides  # noqa: E402
from qlorakit.chat_format import ASSISTANT, HUMAN, cut_at_next_turn, format_guanaco_prompt  # noqa: E402

EXIT_WORDS = ("", "exit", "quit")
TURN_MARKERS = (HUMAN, ASSISTANT)


def build_chat_prompt(history, message):
    """The prompt for the reply to `message`, after the earlier (human, assistant) turns.

    >>> build_chat_prompt([("Hi", "Hello!")], "How are you?")
    '### Human: Hi### Assistant: Hello!### Human: How are you?### Assistant:'
    """
    return format_guanaco_prompt([*history, (message, None)])


def fit_history(history, message, count_tokens, budget):
    """The newest turns of history whose prompt (with `message`) takes at most `budget` tokens.

    >>> fit_history([("a", "b"), ("c", "d")], "e", count_tokens=len, budget=60)
    [('c', 'd')]
    """
    while history and count_tokens(build_chat_prompt(history, message)) > budget:
        history = history[1:]
    return history


def visible_reply(text, final=False):
    """What of a reply streamed so far can be shown: the text before any turn marker, stripped.

    While streaming, a tail that may still become a marker ("###") or trailing white space is held
    back, so that nothing shown ever has to be taken back.

    >>> visible_reply(" Fine. ###")
    'Fine.'
    >>> visible_reply(" Fine. ### Human: And you?")
    'Fine.'
    >>> visible_reply(" Use # for comments.", final=True)
    'Use # for comments.'
    """
    for marker in TURN_MARKERS:
        text = text.split(marker, 1)[0]
    if not final:
        for marker in TURN_MARKERS:
            partial = next((k for k in range(len(marker) - 1, 0, -1) if text.endswith(marker[:k])), 0)
            text = text[:len(text) - partial]
    return text.strip()


def stream_reply(pieces, write):
    """Write the visible part of a reply as its pieces arrive; return the whole reply."""
    text, shown = "", ""
    for piece in pieces:
        text += piece
        now = visible_reply(text)
        if now.startswith(shown) and len(now) > len(shown):
            write(now[len(shown):])
            shown = now
    reply = cut_at_next_turn(text)
    write(reply[len(shown):] if reply.startswith(shown) else "")
    return reply


def generate_pieces(model, tokenizer, prompt, args):
    """Yield the decoded text of a reply while model.generate runs in a background thread."""
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p} if args.temperature > 0 else {"do_sample": False}
    errors = []

    def run():
        try:
            with torch.no_grad():
                model.generate(**inputs, streamer=streamer, max_new_tokens=args.max_new_tokens,
                               pad_token_id=tokenizer.pad_token_id, stop_strings=[HUMAN], tokenizer=tokenizer,
                               **sampling)
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


def chat(model, tokenizer, args):
    interactive = sys.stdin.isatty()
    budget = getattr(model.config, "max_position_embeddings", 2048) - args.max_new_tokens
    count_tokens = lambda text: len(tokenizer(text)["input_ids"])  # noqa: E731
    history = []
    while (message := read_message(interactive)) is not None and message.lower() not in EXIT_WORDS:
        history = fit_history(history, message, count_tokens, budget)
        prompt = build_chat_prompt(history, message)
        if args.show_prompt:
            print(f"prompt: {json.dumps(prompt)}", file=sys.stderr, flush=True)
        if interactive:
            print(f"{ASSISTANT} ", end="", flush=True)
        write = lambda text: print(text, end="", flush=True)  # noqa: E731
        reply = stream_reply(generate_pieces(model, tokenizer, prompt, args), write)
        print(flush=True)
        history.append((message, reply))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", required=True, help="hub id or directory of the base model")
    parser.add_argument("--adapter", help="adapter directory (checkpoint-N/adapter_model); none: the base alone")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="longest reply, in tokens")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0: greedy")
    parser.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--show_prompt", action="store_true", help="print each full prompt to stderr (one JSON string a line)")
    add_base_loading_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from qlorakit.model import load_for_inference  # heavy: after the flags are known to be good

    torch.manual_seed(args.seed)
    model, tokenizer = load_for_inference(args.model_name_or_path, adapter=args.adapter, **loading_overrides(args))
    try:
        chat(model, tokenizer, args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
