"""MOSS-003 SFT rows as conversations.

A row keeps its exchanges under ``chat`` as ``{"turn_1": {"Human": "<|Human|>: ...<eoh>\\n",
"MOSS": "<|MOSS|>: ...<eom>\\n", ...}, "turn_2": ...}``, with ``num_turns`` and a
``meta_instruction`` (MOSS's system prompt). A turn of the plugin release also has
``Inner Thoughts``, ``Commands`` and ``Tool Responses``, each ``None`` between its markers when
the turn uses no tool. The markers are MOSS's own layout; here a turn becomes plain messages that
any chat template renders: the question, the reply, and for a turn that uses a plugin an
assistant turn calling it (its inner thoughts as the text, each command ``Name("argument")`` a
tool call named after the command with ``{"input": argument}``) and the results as a tool turn.

A turn whose ``Commands`` is ``None`` (also ``None.`` or empty) calls no plugin, whatever its inner
thoughts: it is a plain question and reply. Its inner thoughts are dropped, and counted
(``THOUGHTS_DROPPED``, summed in the log): in the messages only a tool-call turn carries inner
thoughts, and a thoughts-only assistant turn before the reply would teach the model to end its
turn after thinking, with nothing to answer the user.

The published plugin data has a few turns whose plugin use cannot be read: commands that are
not ``Name("argument")`` calls (``1. Calculate("...")  # ...``, a ``.format()`` in the argument),
commands whose results are ``None``, results without commands. Such a row is skipped
(``errors.SkippedRow``: qlorakit.data counts them in the log, naming the first), not refused: the
user cannot fix the public files. A row that is not MOSS's shape at all (turns that do not number
``num_turns``, a turn without its Human or MOSS text, an unknown field) is still refused.
"""

import json
import re

from . import chat_data
from .errors import ConversationError, SkippedRow

# Each field of a turn: the marker its text starts with and the one that ends it.
FIELD_MARKERS = {
    "Human": ("<|Human|>:", "<eoh>"),
    "Inner Thoughts": ("<|Inner Thoughts|>:", "<eot>"),
    "Commands": ("<|Commands|>:", "<eoc>"),
    "Tool Responses": ("<|Results|>:", "<eor>"),
    "MOSS": ("<|MOSS|>:", "<eom>"),
}
TOOL_FIELDS = ("Inner Thoughts", "Commands", "Tool Responses")
UNUSED = ("None", "None.", "")  # the texts of a tool field a turn does not use
TURN_KEY = re.compile(r"turn_(\d+)")
COMMAND = re.compile(r'(\w+)\(("(?:[^"\\]|\\.)*"|[^()]*)\)')
COMMAND_SEPARATORS = re.compile(r"[\s,;]*")
COMMAND_ARGUMENT = "input"
# The column of a formatted row that counts its turns whose inner thoughts were dropped (no command).
THOUGHTS_DROPPED = "moss_thoughts_dropped"


def field_text(turn_name, field, value):
    """A field's text without its markers; None for a field the turn does not have or use.

    >>> field_text("turn_1", "Human", "<|Human|>: 你好<eoh>\\n")
    '你好'
    >>> [field_text("turn_1", "Commands", f"<|Commands|>: {text}<eoc>\\n") for text in ("None", "None.", "")]
    [None, None, None]
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConversationError(f"{turn_name} has a {type(value).__name__} {field!r}, not text")
    start, end = FIELD_MARKERS[field]
    text = value.strip().removeprefix(start).removesuffix(end).strip()
    return None if field in TOOL_FIELDS and text in UNUSED else text


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
    command, then the results as a tool turn. Commands that cannot be read skip the row."""
    commands, results = text["Commands"], text["Tool Responses"]
    if results is None:
        raise SkippedRow(f"{turn_name} has commands but no tool responses: {commands!r:.60}")
    calls = [{"type": "function", "function": {"name": name, "arguments": {COMMAND_ARGUMENT: command_argument(arg)}}}
             for name, arg in COMMAND.findall(commands)]
    if not calls or not COMMAND_SEPARATORS.fullmatch(COMMAND.sub("", commands)):
        raise SkippedRow(f"{turn_name} has commands that are not Name(\"argument\"), ...: {commands!r:.60}")
    return [{"role": "assistant", "content": text["Inner Thoughts"] or "", "tool_calls": calls},
            {"role": "tool", "content": results}]


def turn_messages(turn_name, turn):
    """One turn as (messages, whether inner thoughts were dropped): the question, any plugin use, the
    reply. A turn without commands is a plain exchange: its inner thoughts are dropped."""
    if not isinstance(turn, dict):
        raise ConversationError(f"{turn_name} is a {type(turn).__name__}, not an object")
    unknown = [key for key, value in turn.items() if value is not None and key not in FIELD_MARKERS]
    if unknown:
        raise ConversationError(f"{turn_name} has an unknown field {unknown[0]!r} (known: {', '.join(FIELD_MARKERS)})")
    text = {field: field_text(turn_name, field, turn.get(field)) for field in FIELD_MARKERS}
    if text["Human"] is None or text["MOSS"] is None:
        raise ConversationError(f"{turn_name} lacks its {'Human' if text['Human'] is None else 'MOSS'} text")
    question, reply = {"role": "user", "content": text["Human"]}, {"role": "assistant", "content": text["MOSS"]}
    if text["Commands"] is not None:
        return [question, *tool_use_messages(turn_name, text), reply], False
    if text["Tool Responses"] is not None:
        raise SkippedRow(f"{turn_name} has tool responses but no commands")
    return [question, reply], text["Inner Thoughts"] is not None


def format_moss(row):
    """A MOSS-003 row as a conversation: meta_instruction (when the rows still have it) as the system
    turn, then each turn's messages; THOUGHTS_DROPPED counts its turns whose inner thoughts were
    dropped."""
    system = row.get("meta_instruction")
    messages = [{"role": "system", "content": system}] if system else []
    dropped = 0
    for name, turn in ordered_turns(row["chat"], row["num_turns"]):
        exchange, thoughts_dropped = turn_messages(name, turn)
        messages += exchange
        dropped += thoughts_dropped
    return {"messages": chat_data.normalize_messages({}, messages), THOUGHTS_DROPPED: dropped}
