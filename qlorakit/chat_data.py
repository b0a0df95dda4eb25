"""Conversations: rendered with a chat template, trained on every assistant turn.

A conversation is a list of ``{"role", "content"}`` messages (OpenAI-style ``messages``, or
ShareGPT ``conversations`` with ``from``/``value``). One Jinja chat template renders it for
training and for prompting (examples/chat.py, eval/generate.py), so a model is prompted the way
it was trained. The loss falls on the tokens of each assistant turn, its end-of-turn token
included, and on nothing else.

The assistant spans are found from rendered text alone, so any template works, with or without
``{% generation %}`` markers: a turn starts where the conversation before it, rendered with the
generation prompt, ends inside the whole rendering, and ends where the conversation through it
stops matching; the reply's text must lie in between. Whitespace a template writes after an end-of-turn special token is glue, not
part of the reply, and stays untrained.
"""

import logging
import os

from .errors import ConversationError

logger = logging.getLogger(__name__)

# Role names of OpenAI-style messages and of ShareGPT turns, mapped to the three roles trained here.
ROLE_NAMES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# Turns that call or answer a tool: their layout is the chat template's, and text-only templates have none.
TOOL_ROLES = ("function_call", "observation", "tool", "function", "ipython")
TEXT_PART_TYPES = ("text", "input_text", "output_text")
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

# --chat_template names: (Jinja source, description for the log).
NAMED_TEMPLATES = {
    "guanaco": (GUANACO_TEMPLATE, "guanaco (### Human: / ### Assistant:, eos after each reply)"),
    "firefly": (FIREFLY_TEMPLATE, "firefly (bos, then each message closed by eos: <s>q</s>a</s>...)"),
}
TEMPLATE_CHOICES = (*NAMED_TEMPLATES, "tokenizer")


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
        content = "".join(part.get("text") or "" for part in content)
    if not isinstance(content, str):
        raise ConversationError(f"message {number} has a {type(content).__name__} content, not a string")
    tag = next((tag for tag in MEDIA_TAGS if tag in content), None)
    if tag:
        raise ConversationError(f"message {number} holds {tag}: this trainer is text-only and would train the "
                                "tag as text")
    return content


def normalize_message(message, number):
    """One message, OpenAI-style (role/content) or ShareGPT (from/value), as {"role", "content"}."""
    if not isinstance(message, dict):
        raise ConversationError(f"message {number} is a {type(message).__name__}, not an object")
    role_key, content_key = ("from", "value") if "from" in message else ("role", "content")
    role = message.get(role_key)
    if role in TOOL_ROLES or message.get("tool_calls") or message.get("function_call"):
        raise ConversationError(f"message {number} is a tool call or result ({role}): tool calls are not "
                                "trained here; leave such conversations out")
    if role not in ROLE_NAMES:
        raise ConversationError(f"message {number} has unknown {role_key} {role!r} "
                                f"(known: {', '.join(ROLE_NAMES)})")
    return {"role": ROLE_NAMES[role], "content": message_text(message.get(content_key), number)}


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
        if message["role"] == "assistant" and not message["content"].strip():
            raise ConversationError(f"message {number} is an empty assistant reply: nothing to train")
    if not any(message["role"] == "assistant" for message in messages):
        raise ConversationError("has no assistant turn")
    return messages


def normalize_messages(row, messages):
    """The row's messages (with its system column, if any) as checked {"role", "content"} dicts."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("holds no list of messages")
    if row.get("tools") not in (None, "", "[]", []):
        raise ConversationError("has tool definitions (tools): tool calls are not trained here; leave such "
                                "conversations out")
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


def tokenizer_template(tokenizer):
    template = getattr(tokenizer, "chat_template", None)
    return template.get("default") if isinstance(template, dict) else template


def template_name(choice, tokenizer):
    """The --chat_template value `choice` stands for: without one, the tokenizer's own template if
    it has one, else guanaco."""
    if choice is None:
        return "tokenizer" if tokenizer_template(tokenizer) else "guanaco"
    return choice


def resolve_chat_template(choice, tokenizer):
    """(Jinja source, description): the tokenizer's own template if it has one, else Guanaco's,
    unless `choice` names a template of NAMED_TEMPLATES, tokenizer or a .jinja file."""
    choice = template_name(choice, tokenizer)
    if choice in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[choice]
    if choice == "tokenizer":
        if not tokenizer_template(tokenizer):
            raise ConversationError("--chat_template tokenizer: the tokenizer has no chat template; "
                                    "use guanaco or a .jinja file")
        return tokenizer_template(tokenizer), "the tokenizer's own"
    if not choice.endswith(".jinja"):
        raise ConversationError(f"--chat_template must be {', '.join(TEMPLATE_CHOICES)} or a .jinja file, got {choice!r}")
    if not os.path.isfile(choice):
        raise ConversationError(f"--chat_template {choice}: no such file")
    with open(choice, encoding="utf-8") as handle:
        return handle.read(), choice


def render(tokenizer, template, messages, add_generation_prompt=False):
    """The conversation as text, exactly as the template writes it (special tokens as text)."""
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
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


def find_assistant_spans(tokenizer, template, messages):
    """(rendered text, [(start, end)] character spans of the assistant turns)."""
    text = render(tokenizer, template, messages)
    special_tokens = tokenizer.all_special_tokens
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, template, messages[:index], add_generation_prompt=True) if index else ""
        through = render(tokenizer, template, messages[:index + 1])
        start = len(before)
        end = turn_end(text, start, through, special_tokens)
        located = text.startswith(before) and message["content"].strip() in text[start:end]
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


def encode_conversation(tokenizer, template, messages):
    """(input_ids, assistant_mask) of one conversation."""
    text, spans = find_assistant_spans(tokenizer, template, messages)
    ids, offsets = encode_text(tokenizer, text, with_offsets=True)
    mask = mask_from_offsets(offsets, spans)
    if ids and ids[0] == tokenizer.bos_token_id and offsets[0] == (0, 0):
        mask[0] = 0  # the bos we added is no part of any turn
    return ids, mask


def fit_conversation(tokenizer, template, messages, max_len):
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
        encoded[turns] = encode_conversation(tokenizer, template, messages[:ends[turns - 1]])
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
    for messages, row in zip(batch["messages"], batch[ROW_COLUMN]):
        try:
            ids, mask, shortened = fit_conversation(tokenizer, template, messages, max_len)
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


def check_template(tokenizer, template, description):
    """Fail before any data is read when the template cannot render a plain exchange, and warn
    when it ends a reply with no special token: the model would never learn to stop."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Bye"}]
    try:
        text, spans = find_assistant_spans(tokenizer, template, probe)
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
    tokenized = dataset.map(tokenize_conversations, batched=True, desc="Rendering and tokenizing conversations",
                            fn_kwargs={"tokenizer": tokenizer, "template": template, "max_len": max_len,
                                       "source": source})
    kept = tokenized.filter(lambda length: length > 0, input_columns="length", desc="Dropping empty conversations")
    shortened, skipped = sum(tokenized["shortened"]), len(tokenized) - len(kept)
    if shortened or skipped:
        logger.info("%d of %d conversations longer than %d tokens: whole turns dropped from the end (or the first "
                    "exchange cut); %d skipped, no assistant token left", shortened, len(tokenized), max_len, skipped)
    return kept.remove_columns(["shortened", ROW_COLUMN])
