"""Conversations: rendered with a chat template, trained on every assistant turn.

A conversation is a list of ``{"role", "content"}`` messages (OpenAI-style ``messages``, or
ShareGPT ``conversations`` with ``from``/``value``). One Jinja chat template renders it for
training and for prompting (examples/chat.py, eval/generate.py), so a model is prompted the way
it was trained. The loss falls on the tokens of each assistant turn, its end-of-turn token
included, and on nothing else.

The assistant spans are found from rendered text alone, so any template works, with or without
``{% generation %}`` markers: a turn starts where the conversation before it, rendered with the
generation prompt, ends inside the whole rendering, and ends where the conversation through it
stops matching; the reply's text must lie in between. Whitespace a template writes after an
end-of-turn special token is glue, not part of the reply, and stays untrained.

Tool calls (OpenAI ``tool_calls`` and ``tool`` turns, ShareGPT ``function_call``/``observation``
turns, a ``tools`` column) are read into OpenAI's shape and rendered by a template that has a
layout for them (one that mentions ``tools`` or ``tool_calls``): the assistant's tool-call turns
are trained like its replies, the tool results are not. Other templates refuse such rows.
"""

import json
import logging
import os
import re
from dataclasses import dataclass

from .data_cache import map_rows
from .errors import ConversationError

logger = logging.getLogger(__name__)

# Role names of OpenAI-style messages and of ShareGPT turns, mapped to the three roles trained here.
ROLE_NAMES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# Turns that answer a tool call (OpenAI's tool, its older function, Llama's ipython, ShareGPT's observation),
# read as OpenAI tool turns; ShareGPT's function_call turn is an assistant turn calling tools.
TOOL_RESULT_ROLES = ("tool", "function", "ipython", "observation")
SHAREGPT_TOOL_CALL = "function_call"
# The keys a message keeps beside role and content: the calls it makes, or the call it answers.
TOOL_RESULT_KEYS = ("tool_call_id", "name")
TOOL_KEYS = ("tool_calls", *TOOL_RESULT_KEYS)
# The column that carries a conversation's tool keys and definitions from formatting to rendering.
TOOL_COLUMN = "tool_fields"
# A template that never mentions these has no layout for tool calls: it would drop them or fail.
TOOL_MARKS = re.compile(r"\btools\b|\btool_calls\b")
TEXT_PART_TYPES = ("text", "input_text", "output_text")
PART_TEXT_KEYS = ("text", "value")
MEDIA_TAGS = ("<image>", "<video>", "<audio>")
# The row number a conversation carries from formatting to tokenization, so errors can name it.
ROW_COLUMN = "row_number"

# The Guanaco markers as a chat template. A system message is written before the first turn; each
# assistant reply ends with eos, which is what teaches the model to stop after its turn.
GUANACO_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }} "
    "{% elif message['role'] == 'user' %}### Human: {{ message['content'] }}"
    "{% else %}### Assistant: {{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:{% endif %}"
)

# Firefly's layout, <s>q1</s>a1</s>q2</s>a2</s>, with the tokenizer's own bos and eos: every
# message (a system message too) is closed by eos, and a reply follows its question directly.
FIREFLY_TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{{ eos_token }}{% endfor %}"


@dataclass(frozen=True)
class NamedTemplate:
    """A --chat_template name: its Jinja source, its description for the log and --help, and whether
    it writes a system turn as a system prompt (firefly writes every message alike, as a question)."""

    source: str
    description: str
    system_layout: bool


NAMED_TEMPLATES = {
    "guanaco": NamedTemplate(GUANACO_TEMPLATE, "guanaco (### Human: / ### Assistant:, eos after each reply)", True),
    "firefly": NamedTemplate(FIREFLY_TEMPLATE, "firefly (bos, then each message closed by eos: <s>q</s>a</s>...)",
                             False),
}
TEMPLATE_CHOICES = (*NAMED_TEMPLATES, "tokenizer")


def chat_template_help():
    """--chat_template's help, written from NAMED_TEMPLATES."""
    named = ", ".join(template.description for template in NAMED_TEMPLATES.values())
    return (f"How chat rows are rendered: {named}, tokenizer (its own chat template; of named templates, tool_use "
            "for rows with tools where it has one, else default), tokenizer:NAME (one of its named templates) or a "
            ".jinja file. Default: the tokenizer's if it has one, else guanaco. Tool calls need a template that "
            "mentions tools or tool_calls.")


def part_text(part, number):
    """A text part's text: under "text" (OpenAI) or "value" (LLaMA-Factory's content lists).

    >>> part_text({"type": "text", "value": "Bonjour"}, 1)
    'Bonjour'
    """
    text = next((part[key] for key in PART_TEXT_KEYS if key in part), None)
    if not isinstance(text, str):
        raise ConversationError(f"message {number} has a text part without a string under "
                                f"{' or '.join(PART_TEXT_KEYS)}: {part!r:.80}")
    return text


def message_text(content, number):
    """A message's text: a string, or the text parts of an OpenAI content list joined.

    >>> message_text([{"type": "text", "text": "你好"}, {"type": "text", "text": "!"}], 1)
    '你好!'
    """
    if isinstance(content, list):
        kinds = [part.get("type") if isinstance(part, dict) else type(part).__name__ for part in content]
        media = [kind for kind in kinds if kind not in TEXT_PART_TYPES]
        if media:
            raise ConversationError(f"message {number} has a {media[0]!r} part: this trainer is text-only "
                                    "(text parts are joined; images and audio are not trained)")
        content = "".join(part_text(part, number) for part in content)
    if not isinstance(content, str):
        raise ConversationError(f"message {number} has a {type(content).__name__} content, not a string")
    tag = next((tag for tag in MEDIA_TAGS if tag in content), None)
    if tag:
        raise ConversationError(f"message {number} holds {tag}: this trainer is text-only and would train the "
                                "tag as text")
    return content


def json_value(value, what):
    """A JSON text's value; a value that is not text is taken as given (the file held it parsed)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ConversationError(f"{what} is not valid JSON ({error.msg}): {value!r:.60}") from error


def tool_call(call, number):
    """One call as ``{"type": "function", "function": {"name", "arguments"}}`` with its arguments an
    object, as chat templates read it: from OpenAI's shape (arguments as JSON text) or a bare
    ``{"name", "arguments"}`` (ShareGPT's function_call turn, OpenAI's older function_call key).

    >>> tool_call({"name": "天气", "arguments": '{"城市": "北京"}'}, 2)
    {'type': 'function', 'function': {'name': '天气', 'arguments': {'城市': '北京'}}}
    """
    if not isinstance(call, dict):
        raise ConversationError(f"message {number} has a tool call that is a {type(call).__name__}, not an object")
    function = call["function"] if isinstance(call.get("function"), dict) else call
    name = function.get("name")
    arguments = json_value(function.get("arguments", {}), f"message {number}'s tool call arguments")
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        raise ConversationError(f"message {number} has a tool call without a name and an object of arguments: "
                                f"{call!r:.80}")
    normalized = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {**normalized, "id": call["id"]} if isinstance(call.get("id"), str) else normalized


def tool_calls(calls, number):
    calls = calls if isinstance(calls, list) else [calls]
    return [tool_call(call, number) for call in calls]


def text_keys(message, keys):
    """The message's keys among `keys` that hold text (absent and null keys are left out)."""
    return {key: message[key] for key in keys if isinstance(message.get(key), str)}


def normalize_message(message, number):
    """One message, OpenAI-style (role/content) or ShareGPT (from/value), as {"role", "content"}
    plus the tool keys of a tool call (``tool_calls``) or result (role tool, ``tool_call_id``, ``name``)."""
    if not isinstance(message, dict):
        raise ConversationError(f"message {number} is a {type(message).__name__}, not an object")
    role_key, content_key = ("from", "value") if "from" in message else ("role", "content")
    role, content = message.get(role_key), message.get(content_key)
    if role == SHAREGPT_TOOL_CALL:
        calls = json_value(content, f"message {number} ({SHAREGPT_TOOL_CALL})")
        return {"role": "assistant", "content": "", "tool_calls": tool_calls(calls, number)}
    if role in TOOL_RESULT_ROLES:
        return {"role": "tool", "content": message_text(content, number), **text_keys(message, TOOL_RESULT_KEYS)}
    if role not in ROLE_NAMES:
        raise ConversationError(f"message {number} has unknown {role_key} {role!r} "
                                f"(known: {', '.join((*ROLE_NAMES, *TOOL_RESULT_ROLES, SHAREGPT_TOOL_CALL))})")
    calls = message.get("tool_calls") or message.get("function_call")
    if not calls:
        return {"role": ROLE_NAMES[role], "content": message_text(content, number)}
    if ROLE_NAMES[role] != "assistant":
        raise ConversationError(f"message {number} is a {role} turn with tool calls: only the assistant calls tools")
    return {"role": "assistant", "content": "" if content is None else message_text(content, number),
            "tool_calls": tool_calls(calls, number)}


def row_system_message(row, messages):
    """The row's `system` column as a leading system message (ShareGPT files keep it beside the turns)."""
    system = row.get("system")
    if system is None or system == "":
        return []
    if not isinstance(system, str):
        raise ConversationError(f"has a {type(system).__name__} system, not a string")
    if messages and messages[0]["role"] == "system":
        raise ConversationError("has both a system column and a system turn")
    return [{"role": "system", "content": system}]


def check_turns(messages):
    """A trainable conversation: a user turn before the first reply, and no empty reply."""
    first = next((m for m in messages if m["role"] != "system"), None)
    if first is not None and first["role"] == "assistant":
        raise ConversationError(f"message {messages.index(first) + 1} is an assistant turn before any user turn: "
                                "nothing prompts it")
    for number, message in enumerate(messages, start=1):
        if message["role"] == "assistant" and not message["content"].strip() and not message.get("tool_calls"):
            raise ConversationError(f"message {number} is an empty assistant reply: nothing to train")
    if not any(message["role"] == "assistant" for message in messages):
        raise ConversationError("has no assistant turn")
    return messages


def normalize_messages(row, messages):
    """The row's messages (with its system column, if any) as checked {"role", "content"} dicts, with
    the tool keys of tool calls and results."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("holds no list of messages")
    normalized = [normalize_message(message, number) for number, message in enumerate(messages, start=1)]
    return check_turns(row_system_message(row, normalized) + normalized)


def normalize_conversation(row):
    """The row's messages as ``[{"role", "content"}]`` with roles system/user/assistant, checked.

    >>> normalize_conversation({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]})
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}]
    """
    messages = row.get("messages") if row.get("messages") is not None else row.get("conversations")
    if messages is None:
        raise ConversationError("has no 'messages' or 'conversations'")
    return normalize_messages(row, messages)


def as_message_list(value, role):
    """A preference column as messages: a string is one turn of `role`, a message one, a list itself."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [value] if isinstance(value, dict) else value


def chosen_conversation(row):
    """A preference pair's prompt followed by its chosen reply, as checked messages (rejected unused).

    The prompt is the `prompt`, `conversations` or `messages` column; a `chosen` list that already
    starts with the prompt (the whole conversation) stands alone.
    """
    prompt = next((row[key] for key in ("prompt", "conversations", "messages") if row.get(key) is not None), [])
    chosen = as_message_list(row["chosen"], "assistant")
    prompt = as_message_list(prompt, "user")
    if not isinstance(chosen, list) or not isinstance(prompt, list):
        raise ConversationError("has a chosen or prompt that is neither text, a message nor a list of messages")
    whole = chosen if prompt and chosen[:len(prompt)] == prompt else prompt + chosen
    return normalize_messages(row, whole)


def row_tools(value, what="a tools column"):
    """The row's `tools` (JSON text or a list) as the tool schemas chat templates read,
    ``{"type": "function", "function": {"name", ...}}``; a bare ``{"name", ...}`` (LLaMA-Factory's
    tools column) is wrapped in that shape. `what` names the value in errors.

    >>> row_tools('[{"name": "天气", "parameters": {}}]')
    [{'type': 'function', 'function': {'name': '天气', 'parameters': {}}}]
    """
    tools = [] if value is None or value == "" else json_value(value, what)
    tools = [tools] if isinstance(tools, dict) else tools
    wrapped = [tool if isinstance(tool.get("function"), dict) else {"type": "function", "function": tool}
               for tool in tools if isinstance(tool, dict)] if isinstance(tools, list) else []
    if len(wrapped) != len(tools) or not all(isinstance(tool["function"].get("name"), str) for tool in wrapped):
        raise ConversationError(f"has {what} that is not a list of named tool definitions: {value!r:.80}")
    return wrapped


def stored_conversation(messages, tools):
    """The columns a conversation is kept in from formatting to rendering: its messages with role and
    content alone (alike in every row, so the columns have one type), and its messages' tool keys with
    its tool definitions as one JSON text, None for a conversation without tools."""
    keys = {str(index): {key: message[key] for key in TOOL_KEYS if key in message}
            for index, message in enumerate(messages)}
    keys = {index: found for index, found in keys.items() if found}
    uses_tools = tools or keys or any(message["role"] == "tool" for message in messages)
    return {"messages": [{"role": message["role"], "content": message["content"]} for message in messages],
            TOOL_COLUMN: json.dumps({"tools": tools, "messages": keys}, ensure_ascii=False) if uses_tools else None}


def with_tool_fields(messages, fields):
    """(messages, tools) as a chat template takes them: the stored tool keys put back on their messages."""
    if fields is None:
        return messages, None
    stored = json.loads(fields)
    return ([{**message, **stored["messages"].get(str(index), {})} for index, message in enumerate(messages)],
            stored["tools"] or None)


def renders_tools(template):
    """Whether a Jinja template has a layout for tools: it mentions `tools` or `tool_calls` (a template
    that does not would drop the calls, or write them as empty turns)."""
    return bool(TOOL_MARKS.search(template))


# A tokenizer may hold named chat templates (a dict); --chat_template tokenizer:NAME picks one, and without a
# name "tool_use" renders conversations with tools where the tokenizer has it, "default" all others.
TOKENIZER_NAMED = "tokenizer:"
DEFAULT_TEMPLATE, TOOL_USE_TEMPLATE = "default", "tool_use"


def tokenizer_templates(tokenizer):
    """The tokenizer's chat templates by name: its named templates, or its one template as "default"."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return dict(template)
    return {DEFAULT_TEMPLATE: template} if template else {}


def tokenizer_template_name(tokenizer, uses_tools):
    """Which of the tokenizer's named templates renders the rows: tool_use for rows (or --tools) with tools
    when it has one, else default; None for a tokenizer with a single template (or none)."""
    if not isinstance(getattr(tokenizer, "chat_template", None), dict):
        return None
    names = tokenizer_templates(tokenizer)
    if uses_tools and TOOL_USE_TEMPLATE in names:
        return TOOL_USE_TEMPLATE
    if DEFAULT_TEMPLATE not in names:
        raise ConversationError(f"the tokenizer's chat templates have no {DEFAULT_TEMPLATE!r}: pick one with "
                                f"--chat_template {TOKENIZER_NAMED}NAME ({', '.join(sorted(names))})")
    return DEFAULT_TEMPLATE


def template_name(choice, tokenizer, uses_tools=False):
    """The --chat_template value `choice` stands for: without one, the tokenizer's own template if
    it has one, else guanaco; "tokenizer" of a tokenizer with named templates is the one it picks
    (tokenizer:tool_use or tokenizer:default), so the name saved with an adapter says which."""
    if choice is None:
        choice = "tokenizer" if tokenizer_templates(tokenizer) else "guanaco"
    named = tokenizer_template_name(tokenizer, uses_tools) if choice == "tokenizer" else None
    return f"{TOKENIZER_NAMED}{named}" if named else choice


def named_tokenizer_template(name, tokenizer):
    """(Jinja source, description) of the tokenizer's template called `name`; an unknown name lists the names."""
    names = tokenizer_templates(tokenizer)
    if name not in names:
        known = ", ".join(sorted(names)) or "none: it has no chat template"
        raise ConversationError(f"--chat_template {TOKENIZER_NAMED}{name}: the tokenizer has no chat template "
                                f"named {name!r} (its names: {known})")
    return names[name], f"the tokenizer's own, its {name!r} of {', '.join(sorted(names))}"


def resolve_chat_template(choice, tokenizer, uses_tools=False):
    """(Jinja source, description): the tokenizer's own template if it has one, else Guanaco's,
    unless `choice` names a template of NAMED_TEMPLATES, tokenizer (tokenizer:NAME for one of its
    named templates) or a .jinja file. `uses_tools`: the rows (or --tools) carry tools."""
    choice = template_name(choice, tokenizer, uses_tools)
    if choice in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[choice].source, NAMED_TEMPLATES[choice].description
    if choice.startswith(TOKENIZER_NAMED):
        return named_tokenizer_template(choice[len(TOKENIZER_NAMED):], tokenizer)
    if choice == "tokenizer":
        if not tokenizer_templates(tokenizer):
            raise ConversationError("--chat_template tokenizer: the tokenizer has no chat template; "
                                    "use guanaco or a .jinja file")
        return tokenizer_templates(tokenizer)[DEFAULT_TEMPLATE], "the tokenizer's own"
    if not choice.endswith(".jinja"):
        raise ConversationError(f"--chat_template must be {', '.join(TEMPLATE_CHOICES)}, {TOKENIZER_NAMED}NAME or a "
                                f".jinja file, got {choice!r}")
    if not os.path.isfile(choice):
        raise ConversationError(f"--chat_template {choice}: no such file")
    with open(choice, encoding="utf-8") as handle:
        return handle.read(), choice


def render(tokenizer, template, messages, add_generation_prompt=False, tools=None):
    """The conversation as text, exactly as the template writes it (special tokens as text); `tools`
    are the tool schemas transformers hands the template as `tools`."""
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as error:  # jinja errors, and templates that raise_exception on a layout
        raise ConversationError(f"the chat template failed ({type(error).__name__}: {error})") from error


def common_prefix_length(first, second):
    """How many leading characters two strings share.

    >>> common_prefix_length("abcd", "abxy")
    2
    """
    limit = min(len(first), len(second))
    return next((i for i in range(limit) if first[i] != second[i]), limit)


def ends_with_special(text, end, special_tokens):
    return any(token and text.startswith(token, end - len(token)) for token in special_tokens)


def turn_end(text, start, through, special_tokens):
    """Where the assistant turn rendered as `through` ends inside the whole rendering `text`.

    Whitespace after an end-of-turn special token is template glue and stays out. A template that
    closes only the whole conversation (eos at the very end) makes `through` diverge from `text`
    after the turn; the turn then ends at the last special token before the divergence.
    """
    end = common_prefix_length(through, text)
    if end < len(through):
        ends = [i for i in range(end, start, -1) if ends_with_special(text, i, special_tokens)]
        end = ends[0] if ends else start + len(text[start:end].rstrip())
    stripped = start + len(text[start:end].rstrip())
    return stripped if ends_with_special(text, stripped, special_tokens) else end


def turn_is_located(message, rendered_turn):
    """The reply's text, and the name of each tool it calls, lie in the turn's rendering."""
    names = [call["function"]["name"] for call in message.get("tool_calls") or ()]
    return all(part in rendered_turn for part in [message["content"].strip(), *names])


def find_assistant_spans(tokenizer, template, messages, tools=None):
    """(rendered text, [(start, end)] character spans of the assistant turns, tool-call turns included)."""
    text = render(tokenizer, template, messages, tools=tools)
    special_tokens = tokenizer.all_special_tokens
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, template, messages[:index], add_generation_prompt=True, tools=tools) if index else ""
        through = render(tokenizer, template, messages[:index + 1], tools=tools)
        start = len(before)
        end = turn_end(text, start, through, special_tokens)
        located = text.startswith(before) and turn_is_located(message, text[start:end])
        if not located or (spans and start < spans[-1][1]):
            raise ConversationError(f"assistant message {index + 1} cannot be located: the chat template does not "
                                    "render the turns before it as the start of the whole conversation")
        spans.append((start, end))
    return text, spans


def mask_from_offsets(offsets, spans):
    """1 for each token whose first character lies in a span.

    >>> mask_from_offsets([(0, 3), (3, 5), (5, 9)], [(3, 9)])
    [0, 1, 1]
    """
    return [int(any(start <= first < end for start, end in spans)) for first, _ in offsets]


def encode_text(tokenizer, text, with_offsets=False):
    """Token ids of rendered text, starting with bos when the tokenizer has one and the template
    did not write it (as every other format here starts with bos)."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=with_offsets)
    ids, offsets = encoding["input_ids"], encoding.get("offset_mapping")
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
        offsets = [(0, 0), *offsets] if with_offsets else None
    return (ids, offsets) if with_offsets else ids


def encode_conversation(tokenizer, template, messages, tools=None):
    """(input_ids, assistant_mask) of one conversation."""
    text, spans = find_assistant_spans(tokenizer, template, messages, tools)
    ids, offsets = encode_text(tokenizer, text, with_offsets=True)
    mask = mask_from_offsets(offsets, spans)
    if ids and ids[0] == tokenizer.bos_token_id and offsets[0] == (0, 0):
        mask[0] = 0  # the bos we added is no part of any turn
    return ids, mask


def fit_conversation(tokenizer, template, messages, max_len, tools=None):
    """(input_ids, assistant_mask, shortened) within max_len tokens.

    Messages after the last assistant turn are never trained and are dropped. An over-long
    conversation loses whole turns from the end; if even its first exchange is too long, that
    exchange is cut at max_len (and may keep no assistant token: the caller skips it). The longest
    fitting prefix is found by bisection over the assistant turns (a longer prefix never has fewer
    tokens), so a long conversation is encoded a few times instead of once per turn.
    """
    ends = [index + 1 for index, message in enumerate(messages) if message["role"] == "assistant"]
    encoded = {}  # turns kept -> (ids, mask); the first exchange's encoding is reused when nothing fits

    def encode(turns):
        encoded[turns] = encode_conversation(tokenizer, template, messages[:ends[turns - 1]], tools)
        return encoded[turns]

    ids, mask = encode(len(ends))
    if len(ids) <= max_len:
        return ids, mask, False
    fitting, low, high = None, 1, len(ends) - 1  # bisect over the shorter prefixes: 1..high turns
    while low <= high:
        middle = (low + high) // 2
        candidate = encode(middle)
        if len(candidate[0]) <= max_len:
            fitting, low = candidate, middle + 1
        else:
            high = middle - 1
    if fitting is None:  # even the first exchange is too long; bisection ended on it
        ids, mask = encoded[1]
        return ids[:max_len], mask[:max_len], True
    return (*fitting, True)


def prompt_before_last_reply(ids, mask):
    """The tokens before the last assistant span: what a model generates the last reply from."""
    last = max(index for index, trained in enumerate(mask) if trained)
    start = last
    while start > 0 and mask[start - 1]:
        start -= 1
    return ids[:start]


def tokenize_conversations(batch, tokenizer, template, max_len, source):
    """datasets.map body: input_ids + assistant_mask (training), source_ids + input/output (generation)."""
    columns = {name: [] for name in ("input_ids", "assistant_mask", "length", "shortened", "source_ids", "input",
                                     "output")}
    tool_fields = batch[TOOL_COLUMN] if TOOL_COLUMN in batch else [None] * len(batch[ROW_COLUMN])
    for stored, fields, row in zip(batch["messages"], tool_fields, batch[ROW_COLUMN]):
        messages, tools = with_tool_fields(stored, fields)
        try:
            ids, mask, shortened = fit_conversation(tokenizer, template, messages, max_len, tools)
        except ConversationError as error:
            raise ConversationError(f"{source}: row {row + 1}: {error}") from error
        kept = any(mask)
        source_ids = prompt_before_last_reply(ids, mask) if kept else []
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        values = {"input_ids": ids, "assistant_mask": mask, "length": len(ids) if kept else 0,
                  "shortened": shortened, "source_ids": source_ids,
                  "input": tokenizer.decode(source_ids, skip_special_tokens=True), "output": replies[-1]}
        for name, value in values.items():
            columns[name].append(value)
    return columns


# A plain exchange every template must render; with a system turn before it, it tells whether a
# template has a system layout.
PROBE_EXCHANGE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                  {"role": "user", "content": "Bye"}]
PROBE_SYSTEM = "Answer in one word."


def writes_system(tokenizer, template):
    """Whether a Jinja chat template writes a system turn's text at all (many drop it without a word)."""
    try:
        text = render(tokenizer, template, [{"role": "system", "content": PROBE_SYSTEM}, *PROBE_EXCHANGE[:2]])
    except ConversationError:
        return False
    return PROBE_SYSTEM in text


def has_system_layout(choice, tokenizer):
    """Whether the --chat_template `choice` writes a system turn as a system prompt: a named template
    says so; any other does when it writes a probe system turn's text."""
    name = template_name(choice, tokenizer)
    if name in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[name].system_layout
    return writes_system(tokenizer, resolve_chat_template(name, tokenizer)[0])


def warn_unwritten_system(dataset, tokenizer, template, source):
    """Count the conversations whose system prompt the template would drop, and say so in one line."""
    if writes_system(tokenizer, template):
        return
    with_system = sum(1 for messages in dataset["messages"] if messages and messages[0]["role"] == "system")
    if with_system:
        logger.warning("%s: %d of %d conversations have a system prompt that the chat template does not write (it "
                       "has no system layout): they train without it; --chat_template guanaco writes it before "
                       "the first turn", source, with_system, len(dataset))


def own_tool_template(tokenizer, flag):
    """The template flag's value for the tokenizer's own template with a tool layout (tokenizer, or
    tokenizer:NAME of named templates), or None when it has none."""
    named = isinstance(getattr(tokenizer, "chat_template", None), dict)
    found = [name for name, source in sorted(tokenizer_templates(tokenizer).items()) if renders_tools(source)]
    if not found:
        return None
    return f"{flag} {TOKENIZER_NAMED}{found[0]}" if named else f"{flag} tokenizer"


def refuse_without_tool_layout(tokenizer, template, where, flag="--chat_template"):
    """Refuse tools (of a row, or of --tools: `where`) when the template has no layout for them, and say
    which template has one; `flag` is the command's template flag."""
    if renders_tools(template):
        return
    own = own_tool_template(tokenizer, flag)
    which = (f"the tokenizer's own has one: {own}" if own else
             "a template that mentions tools or tool_calls has one: the tokenizer's own where it does (this "
             "tokenizer's does not), or a .jinja file")
    raise ConversationError(f"{where}: has tool calls or tool definitions, but the chat template has no tool "
                            f"layout (it never mentions tools or tool_calls; guanaco and firefly have none); {which}")


def first_tool_row(dataset):
    """The index of the first conversation with tool calls or tool definitions, or None."""
    if TOOL_COLUMN not in dataset.column_names:
        return None
    return next((index for index, fields in enumerate(dataset[TOOL_COLUMN]) if fields is not None), None)


def check_tool_layout(dataset, tokenizer, template, source):
    """Refuse conversations with tool calls or tool definitions, naming the first, when the template has
    no layout for them."""
    index = None if renders_tools(template) else first_tool_row(dataset)
    if index is not None:
        refuse_without_tool_layout(tokenizer, template, f"{source}: row {dataset[ROW_COLUMN][index] + 1}")


def check_template(tokenizer, template, description):
    """Fail before any data is read when the template cannot render a plain exchange, and warn
    when it ends a reply with no special token: the model would never learn to stop."""
    try:
        text, spans = find_assistant_spans(tokenizer, template, PROBE_EXCHANGE)
    except ConversationError as error:
        raise ConversationError(f"chat template {description}: {error}") from error
    reply = text[slice(*spans[0])]
    if not ends_with_special(reply, len(reply), tokenizer.all_special_tokens):
        logger.warning("chat template %s ends an assistant turn with no special token (%r): the model will not "
                       "learn where a reply ends; --chat_template guanaco ends each reply with eos",
                       description, reply[-20:])


def tokenize_chat_dataset(dataset, tokenizer, template, max_len, source="conversations"):
    """Tokenize conversations; drop those left with no assistant token and say how many changed."""
    if ROW_COLUMN not in dataset.column_names:
        dataset = dataset.add_column(ROW_COLUMN, list(range(len(dataset))))
    check_tool_layout(dataset, tokenizer, template, source)
    warn_unwritten_system(dataset, tokenizer, template, source)
    tokenized = map_rows(dataset, tokenize_conversations, batched=True, desc="Rendering and tokenizing conversations",
                         fn_kwargs={"tokenizer": tokenizer, "template": template, "max_len": max_len, "source": source})
    kept = tokenized.filter(lambda length: length > 0, input_columns="length", desc="Dropping empty conversations")
    shortened, skipped = sum(tokenized["shortened"]), len(tokenized) - len(kept)
    if shortened or skipped:
        logger.info("%d of %d conversations longer than %d tokens: whole turns dropped from the end (or the first "
                    "exchange cut); %d skipped, no assistant token left", shortened, len(tokenized), max_len, skipped)
    return kept.remove_columns([c for c in ("shortened", ROW_COLUMN, TOOL_COLUMN) if c in kept.column_names])
