"""The Guanaco conversation format: "### Human: ...### Assistant: ..." turns.

Guanaco was trained on OpenAssistant conversations written this way (the oasst1 format), so
prompts at inference use the same markers, and a generation is cut where the model starts to
write the next human turn.
"""

HUMAN = "### Human:"
ASSISTANT = "### Assistant:"


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
    """The assistant's reply alone: everything before the model starts a new turn.

    >>> cut_at_next_turn(" Fine, thanks.### Human: And you?")
    'Fine, thanks.'
    """
    for marker in (HUMAN, ASSISTANT):
        generation = generation.split(marker, 1)[0]
    return generation.strip()
