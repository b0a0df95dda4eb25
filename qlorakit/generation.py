"""The sampling flags of every command that generates text, and the ``generate`` arguments they
mean. Defaults are the paper's: nucleus sampling with top_p 0.9 at temperature 0.7."""


def add_sampling_arguments(parser, max_new_tokens):
    """``--max_new_tokens``, ``--temperature``, ``--top_p`` and ``--seed``; the two-word flags are
    also accepted with hyphens (``--max-new-tokens``, ``--top-p``)."""
    parser.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int,
                        default=max_new_tokens, help=f"longest reply, in tokens (default {max_new_tokens})")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0: greedy")
    parser.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=0.9, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")


def check_sampling_arguments(parser, args):
    """Refuse values ``generate`` would fail on late, after the model has loaded (exit 2)."""
    if args.max_new_tokens < 1:
        parser.error("--max_new_tokens must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        parser.error("--temperature must be at least 0 and --top_p in (0, 1]")


def sampling_kwargs(args):
    """``generate`` keyword arguments for the parsed sampling flags; temperature 0 is greedy.

    >>> import argparse
    >>> sampling_kwargs(argparse.Namespace(max_new_tokens=8, temperature=0, top_p=0.9))
    {'max_new_tokens': 8, 'do_sample': False}
    """
    if args.temperature > 0:
        return {"max_new_tokens": args.max_new_tokens, "do_sample": True, "temperature": args.temperature,
                "top_p": args.top_p}
    return {"max_new_tokens": args.max_new_tokens, "do_sample": False}
