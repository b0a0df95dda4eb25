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
    --chat_template (guanaco, tokenizer, ...) or a .jinja file that exists, checked before the model loads."""
    from .chat_data import TEMPLATE_CHOICES

    if value in TEMPLATE_CHOICES or (value.endswith(".jinja") and os.path.isfile(value)):
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not {' or '.join(TEMPLATE_CHOICES)} or an existing .jinja file")


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
