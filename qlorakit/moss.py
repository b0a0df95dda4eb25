"""MOSS-003 SFT rows as conversations.

A row keeps its exchanges under ``chat`` as ``{"turn_1": {"Human": "<|Human|>: ...<eoh>\\n",
"MOSS": "<|MOSS|>: ...<eom>\\n", ...}, "turn_2": ...}``, with ``num_turns`` and a
``meta_instruction`` (MOSS's system prompt). A turn of the plugin release also has
``Inner Thoughts``, ``Commands`` and ``Tool Responses``, each ``None`` between its markers when
the turn uses no tool. The markers are MOSS's own layout; here a turn becomes plain messages that
any chat template renders: the question, the reply, and for a turn that uses a plugin an
assistant turn calling it (its inner thoughts as the text, each command ``Name("argument")`` a
tool call named after the command with ``{"input": argument}``) and the results as a tool turn.
"""

import json
import re

from . import chat_data
from .errors import ConversationError

# Each field of a turn: the marker its text starts with and the one that ends it.
FIELD_MARKERS = {
    "Human": ("<|Human|>:", "<eoh>"),
    "Inner Thoughts": ("<|Inner Thoughts|>:", "<eot>"),
    "Commands": ("<|Commands|>:", "<eoc>"),
    "Tool Responses": ("<|Results|>:", "<eor>"),
    "MOSS": ("<|MOSS|>:", "<eom>"),
}
TOOL_FIELDS = ("Inner Thoughts", "Commands", "Tool Responses")
UNUSED = "None"  # the text of a tool field a turn does not use
TURN_KEY = re.compile(r"turn_(\d+)")
COMMAND = re.compile(r'(\w+)\(("(?:[^"\\]|\\.)*"|[^()]*)\)')
COMMAND_SEPARATORS = re.compile(r"[\s,;]*")
COMMAND_ARGUMENT = "input"


def field_text(turn_name, field, value):
    """A field's text without its markers; None for a field the turn does not have or use.

    >>> field_text("turn_1", "Human", "<|Human|>: 你好<eoh>\\n")
    '你好'
    >>> field_text("turn_1", "Commands", "<|Commands|>: None<eoc>\\n") is None
    True
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConversationError(f"{turn_name} has a {type(value).__name__} {field!r}, not text")
    start, end = FIELD_MARKERS[field]
    text = value.strip().removeprefix(start).removesuffix(end).strip()
    return None if field in TOOL_FIELDS and text == UNUSED else text


def ordered_turns(chat, num_turns):
    """[(turn name, turn)] in numeric order (turn_10 after turn_9), checked against num_turns. A null
    turn is absent: a file reader gives each row the turn keys of every row."""
    if not isinstance(chat, dict):
        raise ConversationError(f"has a {type(chat).__name__} 'chat', not an object of turn_N turns")
    if not isinstance(num_turns, int):
        raise ConversationError(f"has a {type(num_turns).__name__} num_turns, not a number")
    numbers = {}
    for key, turn in chat.items():
        match = TURN_KEY.fullmatch(key)
        if match is None:
            raise ConversationError(f"has a 'chat' key {key!r} that is not turn_N")
        if turn is not None:
            numbers[int(match[1])] = key
    if sorted(numbers) != list(range(1, num_turns + 1)):
        raise ConversationError(f"has num_turns {num_turns} but the turns "
                                f"{', '.join(numbers[n] for n in sorted(numbers)) or 'none'}")
    return [(numbers[n], chat[numbers[n]]) for n in sorted(numbers)]


def command_argument(text):
    """A command's argument: a quoted string unquoted, anything else as written."""
    if text.startswith('"'):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text.strip()


def tool_use_messages(turn_name, text):
    """A turn's plugin use as OpenAI messages: an assistant turn (its inner thoughts) calling each
    command, then the results as a tool turn."""
    commands, results = text["Commands"], text["Tool Responses"]
    if commands is None:
        raise ConversationError(f"{turn_name} has inner thoughts or tool responses but no commands")
    if results is None:
        raise ConversationError(f"{turn_name} has commands but no tool responses")
    calls = [{"type": "function", "function": {"name": name, "arguments": {COMMAND_ARGUMENT: command_argument(arg)}}}
             for name, arg in COMMAND.findall(commands)]
    if not calls or not COMMAND_SEPARATORS.fullmatch(COMMAND.sub("", commands)):
        raise ConversationError(f"{turn_name} has commands that are not Name(\"argument\"), ...: {commands!r:.60}")
    return [{"role": "assistant", "content": text["Inner Thoughts"] or "", "tool_calls": calls},
            {"role": "tool", "content": results}]


def turn_messages(turn_name, turn):
    """One turn as messages: the question, any plugin use, the reply."""
    if not isinstance(turn, dict):
        raise ConversationError(f"{turn_name} is a {type(turn).__name__}, not an object")
    unknown = [key for key, value in turn.items() if value is not None and key not in FIELD_MARKERS]
    if unknown:
        raise ConversationError(f"{turn_name} has an unknown field {unknown[0]!r} (known: {', '.join(FIELD_MARKERS)})")
    text = {field: field_text(turn_name, field, turn.get(field)) for field in FIELD_MARKERS}
    if text["Human"] is None or text["MOSS"] is None:
        raise ConversationError(f"{turn_name} lacks its {'Human' if text['Human'] is None else 'MOSS'} text")
    uses_tools = any(text[field] is not None for field in TOOL_FIELDS)
    return [{"role": "user", "content": text["Human"]}, *(tool_use_messages(turn_name, text) if uses_tools else []),
            {"role": "assistant", "content": text["MOSS"]}]


def format_moss(row):
    """A MOSS-003 row as a conversation: meta_instruction (when the rows still have it) as the system
    turn, then each turn's messages."""
    system = row.get("meta_instruction")
    messages = [{"role": "system", "content": system}] if system else []
    messages += [message for name, turn in ordered_turns(row["chat"], row["num_turns"])
                 for message in turn_messages(name, turn)]
    return {"messages": chat_data.normalize_messages({}, messages)}
