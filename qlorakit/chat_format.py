"""The Guanaco conversation format: "### Human: ...### Assistant: ..." turns.

Guanaco was trained on OpenAssistant conversations written this way (the oasst1 format), so
prompts at inference use the same markers, and a generation is cut where the model starts to
write the next human turn.
"""

HUMAN = "### Human:"
ASSISTANT = "### Assistant:"
# A sampled reply runs on into the next turn, or into a new conversation opening with the
# system prompt of the Vicuna/Guanaco evaluation prompts; the reply ends before either.
NEXT_TURN_MARKERS = (HUMAN, ASSISTANT, "A chat between a curious human")


def format_guanaco_prompt(turns):
    """Prompt for the next assistant reply; turns are (human, assistant or None) pairs, oldest first.

    >>> format_guanaco_prompt([("Hi", "Hello!"), ("How are you?", None)])
    '### Human: Hi### Assistant: Hello!### Human: How are you?### Assistant:'
    """
    parts = []
    for human, assistant in turns:
        parts.append(f"{HUMAN} {human}")
        parts.append(f"{ASSISTANT} {assistant}" if assistant is not None else ASSISTANT)
    return "".join(parts)


def cut_at_next_turn(generation):
    """The assistant's reply alone: everything before the model starts a new turn or a new
    conversation (``NEXT_TURN_MARKERS``), stripped.

    >>> cut_at_next_turn(" Fine, thanks.### Human: And you?")
    'Fine, thanks.'
    >>> cut_at_next_turn(" Fine. A chat between a curious human and ...")
    'Fine.'
    """
    cut = min((position for marker in NEXT_TURN_MARKERS if (position := generation.find(marker)) != -1),
              default=len(generation))
    return generation[:cut].strip()


def held_back_marker_start(text):
    """Length of the tail of ``text`` that could still grow into a turn marker (``"###"``): a
    streaming reply holds it back so that nothing shown has to be taken back.

    >>> held_back_marker_start(" Fine. ###")
    3
    >>> held_back_marker_start(" Fine.")
    0
    """
    return max((k for marker in NEXT_TURN_MARKERS for k in range(len(marker) - 1, 0, -1)
                if text.endswith(marker[:k])), default=0)
