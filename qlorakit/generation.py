"""Generation controls, defined once for every command that generates text.

qlora-generate, qlora-guanaco-generate and qlora-chat take the same flags (``add_generation_arguments``);
qlora.py --do_predict takes the same controls under the reference's names (``GenerationArguments``).
Both end in one transformers ``GenerationConfig`` (``build_generation_config``) and cut their
output at the same stop strings (``cut_at_stop_strings``). Stop strings default to the turn
markers of the prompt template in use (``template_stop_strings``): a reply ends where the model
starts writing the next turn. Sampling defaults are the paper's: nucleus sampling with top_p 0.9
at temperature 0.7. Light on purpose (no torch import): commands parse flags before the model loads.
"""

import sys

# name: (whether a value is allowed, what it must be). None always is: the setting is left unset.
LIMITS = {
    "max_new_tokens": (lambda value: value >= 1, "at least 1"),
    "temperature": (lambda value: value >= 0, "at least 0"),
    "top_p": (lambda value: 0 < value <= 1, "in (0, 1]"),
    "top_k": (lambda value: value >= 0, "at least 0"),
    "repetition_penalty": (lambda value: value > 0, "above 0"),
    "no_repeat_ngram_size": (lambda value: value >= 0, "at least 0"),
    "max_time": (lambda value: value > 0, "above 0 (seconds)"),
}
MODEL_DEFAULT = "default: the model's generation_config.json"


def add_generation_arguments(parser, max_new_tokens):
    """The generation flags of an inference command, in one group; every two-word flag is also
    accepted with hyphens (``--max-new-tokens``, ``--repetition-penalty``, ...)."""
    group = parser.add_argument_group("generation")
    group.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int,
                       default=max_new_tokens, help=f"longest reply, in tokens (default {max_new_tokens})")
    group.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0: greedy (default 0.7)")
    group.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=0.9,
                       help="nucleus sampling mass (default 0.9)")
    group.add_argument("--top_k", "--top-k", dest="top_k", type=int,
                       help=f"sample from the k likeliest tokens, 0: all ({MODEL_DEFAULT}, else 50)")
    group.add_argument("--repetition_penalty", "--repetition-penalty", dest="repetition_penalty", type=float,
                       help=f"divide the scores of tokens already present; 1: none ({MODEL_DEFAULT}, else 1)")
    group.add_argument("--no_repeat_ngram_size", "--no-repeat-ngram-size", dest="no_repeat_ngram_size", type=int,
                       help=f"never repeat an n-gram of this size; 0: off ({MODEL_DEFAULT}, else 0)")
    group.add_argument("--max_time", "--max-time", dest="max_time", type=float,
                       help="stop a generate call after this many seconds (default: no limit)")
    group.add_argument("--stop_strings", "--stop-strings", dest="stop_strings", nargs="*", metavar="TEXT",
                       help="end a reply where one of these appears, cut before it; '' for none (default: the "
                            "prompt template's turn markers, e.g. '### Human:' '### Assistant:' for guanaco)")
    group.add_argument("--seed", type=int, default=0, help="sampling seed")


def control_problem(values):
    """Why a mapping of control values cannot be generated with (the first bad value, as a flag),
    or None. Checked before the model loads, instead of failing inside ``generate``.

    >>> control_problem({"repetition_penalty": 0.0, "top_k": None})
    '--repetition_penalty must be above 0, got 0.0'
    """
    for name, (allowed, what) in LIMITS.items():
        value = values.get(name)
        if value is not None and not allowed(value):  # NaN is allowed by no test
            return f"--{name} must be {what}, got {value}"
    return None


def check_generation_arguments(parser, args):
    """Refuse values ``generate`` would fail on late, after the model has loaded (exit 2)."""
    problem = control_problem(vars(args))
    if problem:
        parser.error(problem)


def generation_settings(args):
    """``GenerationConfig`` values of the parsed flags; temperature 0 is greedy. Flags left unset
    leave the model's own generation_config.json in force.

    >>> import argparse
    >>> generation_settings(argparse.Namespace(max_new_tokens=8, temperature=0, top_p=0.9, top_k=None,
    ...                                        repetition_penalty=1.2, no_repeat_ngram_size=None, max_time=None))
    {'max_new_tokens': 8, 'repetition_penalty': 1.2, 'do_sample': False}
    """
    settings = {"max_new_tokens": args.max_new_tokens, "repetition_penalty": args.repetition_penalty,
                "no_repeat_ngram_size": args.no_repeat_ngram_size, "max_time": args.max_time}
    if args.temperature > 0:
        settings.update(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    else:
        settings["do_sample"] = False
    return {name: value for name, value in settings.items() if value is not None}


def decoding_settings(generation_args):
    """GenerationConfig values of qlora.py's generation flags (GenerationArguments) that are set;
    its stop strings are resolved apart, against the prompt template."""
    return {name: value for name, value in vars(generation_args).items()
            if value is not None and name != "stop_strings"}


def build_generation_config(settings, stop_strings=(), pad_token_id=None):
    """The ``GenerationConfig`` every command generates with. Stop strings need the tokenizer passed
    to ``generate(tokenizer=...)``; settings it leaves unset come from the model's own config."""
    from transformers import GenerationConfig

    extra = {"pad_token_id": pad_token_id} if pad_token_id is not None else {}
    return GenerationConfig(**settings, stop_strings=list(stop_strings) or None, **extra)


def inference_generation_config(args, tokenizer, template):
    """The GenerationConfig of an inference command's parsed flags, with the stop strings of the
    template it prompts with unless --stop_strings names others (said in one line on stderr)."""
    stop_strings = resolve_stop_strings(args.stop_strings, tokenizer, template)
    print(describe_stop_strings(stop_strings, args.stop_strings), file=sys.stderr, flush=True)
    return build_generation_config(generation_settings(args), stop_strings, tokenizer.pad_token_id)


def template_stop_strings(tokenizer, template):
    """The turn markers of a chat template: what it writes before a user message (after a reply) and
    before an assistant reply, without the eos (generation stops at eos anyway). A model writing
    either has finished its own reply. Templates that write nothing there have none (firefly)."""
    from .chat_data import render

    first, reply, second = "\x01", "\x02", "\x03"
    messages = [{"role": role, "content": text} for role, text in zip(("user", "assistant", "user"),
                                                                       (first, reply, second))]
    conversation = render(tokenizer, template, messages)
    prompt = render(tokenizer, template, messages[:1], add_generation_prompt=True)
    between = (conversation[conversation.find(reply) + 1:conversation.find(second)], prompt[prompt.find(first) + 1:])
    markers = [(text.replace(tokenizer.eos_token, "") if tokenizer.eos_token else text).strip() for text in between]
    return list(dict.fromkeys(marker for marker in markers if marker))


def resolve_stop_strings(given, tokenizer, template):
    """The stop strings to generate with: the ones given (one string or a list, as a config file may
    give it; empty strings dropped, so '' means none), else the template's turn markers; a template
    of None (text no chat template writes) has none."""
    if given is not None:
        return [text for text in ([given] if isinstance(given, str) else given) if text]
    return template_stop_strings(tokenizer, template) if template is not None else []


def describe_stop_strings(stop_strings, given):
    """One line for the log: which stop strings, and where they come from.

    >>> describe_stop_strings(["### Human:"], None)
    "stop strings: '### Human:' (the prompt template's turn markers)"
    >>> describe_stop_strings([], [""])
    'stop strings: none (--stop_strings)'
    """
    source = "--stop_strings" if given is not None else "the prompt template's turn markers"
    return f"stop strings: {', '.join(map(repr, stop_strings)) or 'none'} ({source})"


def cut_at_stop_strings(text, stop_strings):
    """``text`` up to the first stop string, which is left out; all of it without one.

    >>> cut_at_stop_strings(" Fine, thanks.### Human: And you?", ["### Human:", "### Assistant:"])
    ' Fine, thanks.'
    """
    return text[:min((at for stop in stop_strings if (at := text.find(stop)) != -1), default=len(text))]


def stop_strings_of(generation_config):
    """The stop strings of a GenerationConfig as a list (a config file may hold a single string).

    >>> from transformers import GenerationConfig
    >>> stop_strings_of(GenerationConfig(stop_strings="### Human:")), stop_strings_of(GenerationConfig())
    (['### Human:'], [])
    """
    stop_strings = generation_config.stop_strings or []
    return [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)


def reply_text(generation, generation_config):
    """The reply in a generated text: before the first stop string of the config it was generated
    with, stripped."""
    return cut_at_stop_strings(generation, stop_strings_of(generation_config)).strip()


def held_back_length(text, stop_strings):
    """Length of the tail of ``text`` that could still grow into a stop string: a streaming reply
    holds it back so that nothing shown has to be taken back.

    >>> held_back_length(" Fine. ###", ["### Human:"])
    3
    >>> held_back_length(" Fine.", ["### Human:"])
    0
    """
    return max((k for stop in stop_strings for k in range(len(stop) - 1, 0, -1) if text.endswith(stop[:k])),
               default=0)
