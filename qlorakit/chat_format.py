"""The Guanaco conversation format: "### Human: ...### Assistant: ..." turns.

Guanaco was trained on OpenAssistant conversations written this way (the oasst1 format). Prompts
are rendered by qlorakit.chat_data's templates (one renderer for training and inference); this
module holds the markers, where the judge cuts a generation, and the template flag's check.
"""

import argparse
import os

HUMAN = "### Human:"
ASSISTANT = "### Assistant:"
# A sampled reply runs on into the next turn, or into a new conversation opening with the
# system prompt of the Vicuna/Guanaco evaluation prompts; the reply ends before either.
NEXT_TURN_MARKERS = (HUMAN, ASSISTANT, "A chat between a curious human")


def template_choice(value):
    """argparse type of the inference commands' template flag: a named template of training's
    --chat_template (guanaco, tokenizer, tokenizer:NAME, ...) or a .jinja file that exists, checked before
    the model loads (a NAME the tokenizer lacks is refused once it is loaded)."""
    from .chat_data import TEMPLATE_CHOICES, TOKENIZER_NAMED

    named = value.startswith(TOKENIZER_NAMED) and len(value) > len(TOKENIZER_NAMED)
    if value in TEMPLATE_CHOICES or named or (value.endswith(".jinja") and os.path.isfile(value)):
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not {', '.join(TEMPLATE_CHOICES)}, {TOKENIZER_NAMED}NAME or an "
                                     "existing .jinja file")


def tools_file(path):
    """argparse type of the inference commands' --tools: a JSON file holding a list of tool (function)
    schemas, the shape of training's tools column, read as chat templates take them."""
    from .chat_data import ConversationError, row_tools

    try:
        with open(path, encoding="utf-8") as handle:
            tools = row_tools(handle.read(), "a JSON file")
    except (OSError, ConversationError) as error:
        raise argparse.ArgumentTypeError(f"{path}: {getattr(error, 'strerror', None) or error}") from error
    if not tools:
        raise argparse.ArgumentTypeError(f"{path}: holds no tool definitions")
    return tools


def add_tools_argument(parser):
    parser.add_argument("--tools", type=tools_file, metavar="FILE.json",
                        help="a JSON list of tool (function) schemas, the shape of qlora.py's tools column, handed "
                             "to the chat template as tools (a template without a tool layout refuses them)")


def cut_at_next_turn(generation):
    """The assistant's reply alone: everything before the model starts a new turn or a new
    conversation (``NEXT_TURN_MARKERS``), stripped. The judge reads answer files with it, whatever
    stop strings wrote them.

    >>> cut_at_next_turn(" Fine, thanks.### Human: And you?")
    'Fine, thanks.'
    >>> cut_at_next_turn(" Fine. A chat between a curious human and ...")
    'Fine.'
    """
    from .generation import cut_at_stop_strings

    return cut_at_stop_strings(generation, NEXT_TURN_MARKERS).strip()
