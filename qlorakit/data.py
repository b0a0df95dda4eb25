"""Datasets: the built-in registry, row formats, detection, loading and tokenization.

Every dataset but conversations is reduced to rows of ``{"input", "output"}`` text: the model
learns to write the output after the input. Conversations (the chat format, qlorakit.chat_data)
are rendered whole and carry a per-token mask of their assistant turns instead. Rows are
tokenized once, up front (cached by datasets), so a training step only pads; the reference
tokenized every micro-batch again inside its collator. Batching the tokenized rows is
qlorakit.collate's job.
"""

import gzip
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from datasets import DatasetDict, Features, List, Value, concatenate_datasets, load_dataset

from . import chat_data, moss
from .data_cache import map_rows
from .errors import DataError, SkippedRow
from .jsonl import JSON_KINDS
from .trained_template import template_record

logger = logging.getLogger(__name__)

# Local file types and the datasets builder that reads each (gzip-compressed JSON is unpacked by datasets).
LOCAL_EXTENSIONS = {".json": "json", ".jsonl": "json", ".json.gz": "json", ".jsonl.gz": "json", ".csv": "csv",
                    ".tsv": "csv", ".parquet": "parquet"}

# Formats whose text is written in the Guanaco markers ("### Human: ... ### Assistant: ...").
GUANACO_LAYOUT_FORMATS = ("oasst1",)

# Our own wording of the instruction/input/response layout used by Alpaca-style data.
ALPACA_TEMPLATE_WITH_INPUT = (
    "Complete the task described by the instruction, using the input as context.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response: "
)
ALPACA_TEMPLATE_NO_INPUT = (
    "Complete the task described by the instruction.\n\n### Instruction:\n{instruction}\n\n### Response: "
)


def alpaca_prompt(row):
    """The instruction with its input (if any) after it: one user turn of a conversation."""
    return f"{row['instruction']}\n{row['input']}" if row.get("input") else row["instruction"]


def alpaca_conversation(row):
    """An Alpaca row with earlier exchanges (`history`: [[question, answer], ...]) or a `system`
    prompt, as a conversation: every answer is trained, as in a chat row."""
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(pair, list) and len(pair) == 2 for pair in history):
        raise chat_data.ConversationError("has a history that is not a list of [question, answer] pairs")
    turns = [{"role": role, "content": text} for pair in history for role, text in zip(("user", "assistant"), pair)]
    turns += [{"role": "user", "content": alpaca_prompt(row)}, {"role": "assistant", "content": row["output"]}]
    return chat_data.normalize_messages(row, turns)


def format_alpaca(row):
    """The Alpaca prompt and its output; with a history or system column, a conversation (the
    prompt layout has no place for either)."""
    if "history" in row or "system" in row:
        return {"messages": alpaca_conversation(row)}
    template = ALPACA_TEMPLATE_WITH_INPUT if row.get("input") else ALPACA_TEMPLATE_NO_INPUT
    return {"input": template.format(instruction=row["instruction"], input=row.get("input", "")),
            "output": row["output"]}


def format_chip2(row):
    human, _, bot = row["text"].partition("\n<bot>: ")
    return {"input": human.replace("<human>: ", ""), "output": bot}


def format_self_instruct(row):
    return {"input": row["prompt"], "output": row["completion"]}


HH_ASSISTANT = "\n\nAssistant:"


def split_hh_dialogue(text):
    """An hh-rlhf dialogue as (everything through the last "Assistant:", the last reply): the
    reply is what the pair's preference is about, so it alone is trained.

    >>> split_hh_dialogue("\\n\\nHuman: Hi\\n\\nAssistant: Hello\\n\\nHuman: 再见\\n\\nAssistant: 再见!")
    ('\\n\\nHuman: Hi\\n\\nAssistant: Hello\\n\\nHuman: 再见\\n\\nAssistant:', ' 再见!')
    """
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise chat_data.ConversationError("has a chosen text with no '\\n\\nAssistant:' turn")
    cut += len(HH_ASSISTANT)
    return text[:cut], text[cut:]


def format_hh_rlhf(row):
    """The chosen side of a preference pair, its prompt untrained: hh-rlhf dialogue text, a
    prompt + chosen text pair, or (messages in any column) a conversation ending in the chosen reply."""
    chosen, prompt = row["chosen"], row.get("prompt")
    if isinstance(chosen, str) and row.get("conversations") is None and row.get("messages") is None:
        if isinstance(prompt, str):
            return {"input": prompt, "output": chosen}
        if prompt is None:
            source, reply = split_hh_dialogue(chosen)
            return {"input": source, "output": reply}
    return {"messages": chat_data.chosen_conversation(row)}


def format_oasst1(row):
    return {"input": "", "output": row["text"]}


def format_input_output(row):
    return {"input": row["input"], "output": row["output"]}


def format_chat(row):
    return {"messages": chat_data.normalize_conversation(row)}


def format_firefly(row):
    """Firefly's rows: a list of {"human", "assistant"} exchanges under 'conversation'."""
    exchanges = row["conversation"]
    if not isinstance(exchanges, list) or not all(isinstance(e, dict) for e in exchanges):
        raise chat_data.ConversationError("'conversation' is not a list of {\"human\", \"assistant\"} objects")
    messages = [{"role": role, "content": exchange.get(key)} for exchange in exchanges
                for role, key in (("user", "human"), ("assistant", "assistant"))]
    return {"messages": chat_data.normalize_conversation({"messages": messages})}


@dataclass(frozen=True)
class DataFormat:
    """A row format: how its rows become input/output text or messages, and which columns it reads.

    `needs` lists alternative column sets (any one must be present); `reads` the further columns
    it uses when present (every other column is logged as not used); `text` the columns that must
    hold strings. `detected` formats are chosen from a file's columns unless it has one of `unless`.
    `optional_system` is a column the format writes as the system turn only when the chat template
    has a system layout; otherwise it is named as not used (the rows train without it).
    A format that `skips_rows` (its rows are conversations) leaves out a row that raises
    errors.SkippedRow, counting such rows in the log (drop_skipped_rows); `counts` are (column, log
    text with {} for the sum) of numbers its rows carry beside their messages, summed in the log.
    """

    format_row: Callable[[dict], dict]
    needs: tuple[tuple[str, ...], ...]
    reads: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    detected: bool = True
    unless: tuple[str, ...] = ()
    optional_system: str | None = None
    skips_rows: bool = False
    counts: tuple[tuple[str, str], ...] = ()


FORMATS = {
    "alpaca": DataFormat(format_alpaca, (("instruction", "output"),), ("input", "history", "system"),
                         text=("instruction", "input", "output")),
    "chip2": DataFormat(format_chip2, (("text",),), text=("text",), detected=False),
    "self-instruct": DataFormat(format_self_instruct, (("prompt", "completion"),), text=("prompt", "completion")),
    # Preference pairs train their chosen side only when asked: detection refuses them.
    "hh-rlhf": DataFormat(format_hh_rlhf, (("chosen",),), ("prompt", "conversations", "messages", "system", "tools"),
                          detected=False),
    "oasst1": DataFormat(format_oasst1, (("text",),), text=("text",)),
    # Alpaca rows have input and output too; the instruction column tells them apart.
    "input-output": DataFormat(format_input_output, (("input", "output"),), text=("input", "output"),
                               unless=("instruction",)),
    "chat": DataFormat(format_chat, (("messages",), ("conversations",)), ("system", "tools")),
    "firefly": DataFormat(format_firefly, (("conversation",),)),
    # MOSS-003 SFT rows; its meta_instruction (the same preamble in every row) is the system turn only
    # where the template has one: Firefly's conversion of these rows drops it too.
    # Its plugin release has a few unreadable plugin calls: those rows are skipped, and counted.
    "moss": DataFormat(moss.format_moss, (("chat", "num_turns"),), ("meta_instruction",), text=("meta_instruction",),
                       optional_system="meta_instruction", skips_rows=True,
                       counts=((moss.THOUGHTS_DROPPED, "turns with inner thoughts but no command: {}; their thoughts "
                                                       "are dropped (only a tool-call turn carries them)"),)),
}
FORMATTED_COLUMNS = ("input", "output", "messages")
# The columns of formatted conversations, given to datasets when a file has a `messages` column: its
# formatted column would keep the file's type otherwise (free-form JSON where messages carry tool keys),
# and would not concatenate with another source's.
CONVERSATION_FEATURES = Features({"messages": List({"role": Value("string"), "content": Value("string")}),
                                  chat_data.TOOL_COLUMN: Value("string"), chat_data.ROW_COLUMN: Value("int64")})
# Why a row of a format that skips rows was left out (None for a kept row); dropped once counted.
SKIP_COLUMN = "skipped_because"
PREFERENCE_COLUMNS = ("chosen", "rejected")
# Columns of images, audio or video: this trainer trains text only, and would drop them unseen.
MEDIA_COLUMNS = ("images", "image", "videos", "video", "audios", "audio")
# A KTO `label` column (true/false): rows labelled false are examples of what not to write.
KTO_LABEL = "label"
# Column names other datasets give a field a format reads: the source of "--dataset_columns" hints.
COLUMN_SYNONYMS = {
    "output": ("response", "answer", "completion", "target", "reply"),
    "input": ("context", "query"),
    "instruction": ("question", "prompt"),
    "prompt": ("question", "instruction", "query"),
    "completion": ("response", "answer", "output"),
}


@dataclass(frozen=True)
class HubDataset:
    path: str
    format: str
    name: str | None = None
    data_files: str | None = None


# The hub datasets the reference trains on, with the formats it applies to them.
HUB_DATASETS = {
    "alpaca": HubDataset("tatsu-lab/alpaca", "alpaca"),
    "alpaca-clean": HubDataset("yahma/alpaca-cleaned", "alpaca"),
    "chip2": HubDataset("laion/OIG", "chip2", data_files="unified_chip2.jsonl"),
    "self-instruct": HubDataset("yizhongw/self_instruct", "self-instruct", name="self_instruct"),
    "hh-rlhf": HubDataset("Anthropic/hh-rlhf", "hh-rlhf"),
    "longform": HubDataset("akoksal/LongForm", "input-output"),
    "oasst1": HubDataset("timdettmers/openassistant-guanaco", "oasst1"),
}


def columns_rule(data_format):
    """The columns that choose a format, as the help and the errors write them.

    >>> columns_rule(FORMATS["chat"]), columns_rule(FORMATS["input-output"])
    ('messages or conversations', 'input + output without instruction')
    """
    rule = " or ".join(" + ".join(columns) for columns in data_format.needs)
    return f"{rule} without {' or '.join(data_format.unless)}" if data_format.unless else rule


def dataset_format_help():
    """--dataset_format's help, written from FORMATS: adding a format is one entry there."""
    detected = ", ".join(f"{columns_rule(f)}: {name}" for name, f in FORMATS.items() if f.detected)
    asked = " and ".join(name for name, f in FORMATS.items() if not f.detected)
    return (f"{' | '.join(FORMATS)}. Defaults to the built-in dataset's own format; for other data the columns "
            f"decide ({detected}); {asked} only with this flag.")


def dataset_help():
    """--dataset's help, written from HUB_DATASETS and LOCAL_EXTENSIONS."""
    return (f"Built-in name ({', '.join(HUB_DATASETS)}), a hub dataset id (owner/name) or a local "
            f"{'/'.join(LOCAL_EXTENSIONS)} file; several, separated by commas, are mixed.")


def format_fits(data_format, present):
    """The column set through which a format fits the columns present, or None."""
    if set(data_format.unless) & present:
        return None
    return next((needs for needs in data_format.needs if set(needs) <= present), None)


def column_hint(name, data_format, present):
    """How close a format comes to the columns: (columns it lacks with no likely mapping, minus the
    columns it has, text): the smallest comes closest.

    A lacking column is mapped from a present column that other datasets use for it (Dolly's
    `response` for `output`), and so is a column the format reads when present.
    """
    needs = max(data_format.needs, key=lambda cols: len(set(cols) & present))
    lacking = [column for column in needs if column not in present]
    mapping = {field: next((c for c in COLUMN_SYNONYMS.get(field, ()) if c in present), None)
               for field in lacking + [c for c in data_format.reads if c not in present]}
    unmapped = [field for field in lacking if mapping[field] is None]
    has = [column for column in needs if column in present]
    text = f"{name} (has {', '.join(has) or 'none of its columns'}; lacks {', '.join(lacking)})"
    pairs = ",".join(f"{field}={column}" for field, column in mapping.items() if column)
    if not unmapped and pairs:
        text += f": try --dataset_format {name} --dataset_columns {pairs}"
    return len(unmapped), -len(has), text


def no_fit_message(present):
    """The formats that come closest to the columns, or each format's columns when none is close."""
    hints = sorted(column_hint(name, f, present) for name, f in FORMATS.items())
    close = [text for unmapped, minus_has, text in hints if minus_has or not unmapped]
    if close:
        best = [text for unmapped, minus_has, text in hints if (unmapped, minus_has) == hints[0][:2] and text in close]
        return f"they fit no format; closest: {'; '.join(best or close[:2])}"
    rules = "; ".join(f"{name}: {columns_rule(f)}" for name, f in FORMATS.items())
    return f"they fit no format and no format reads any of them (formats and the columns they need: {rules})"


def detect_format(columns, source):
    """The one detectable format whose columns the data has; none or several is an error that
    names the formats that come closest, or every format whose columns are there."""
    present = set(columns)
    if set(PREFERENCE_COLUMNS) <= present:
        raise DataError(f"{source}: columns ({', '.join(columns)}) are preference pairs; this trainer trains on "
                        "examples, not pairs: pass --dataset_format hh-rlhf to train on the chosen side (the "
                        "rejected side is not used)")
    fits = {name: format_fits(f, present) for name, f in FORMATS.items()}
    found = sorted(name for name, needs in fits.items() if needs and FORMATS[name].detected)
    if len(found) != 1:
        candidates = sorted(name for name, needs in fits.items() if needs)
        if len(candidates) > 1:
            reason = f"they fit {' and '.join(candidates)}; pass --dataset_format {' or '.join(candidates)}"
        elif candidates:
            reason = (f"they fit only {candidates[0]}, which columns alone do not choose: "
                      f"pass --dataset_format {candidates[0]}")
        else:
            reason = no_fit_message(present)
        raise DataError(f"{source}: cannot tell the format from the columns ({', '.join(columns)}): {reason}")
    logger.info("%s: dataset format %s, detected from the columns (%s); --dataset_format overrides",
                source, found[0], ", ".join(fits[found[0]]))
    return found[0]


def resolve_format(dataset, dataset_format, columns=()):
    """The format to apply: the flag if given, else the built-in dataset's, else the columns'."""
    if dataset_format is not None:
        if dataset_format not in FORMATS:
            raise DataError(f"unknown --dataset_format {dataset_format!r}; known: {', '.join(FORMATS)}")
        return dataset_format
    if dataset in HUB_DATASETS:
        return HUB_DATASETS[dataset].format
    return detect_format(columns, dataset)


def parse_column_mapping(value):
    """--dataset_columns FIELD=COLUMN,... (or a YAML mapping) as {column in the file: field it fills}.

    >>> parse_column_mapping("input=context,output=response")
    {'context': 'input', 'response': 'output'}
    """
    if not value:
        return {}
    pairs = value.items() if isinstance(value, dict) else (item.partition("=")[::2] for item in value.split(","))
    mapping = {}
    known = sorted({c for f in FORMATS.values() for cols in f.needs for c in cols} |
                   {c for f in FORMATS.values() for c in f.reads})
    for field_name, column in pairs:
        field_name, column = str(field_name).strip(), str(column).strip()
        if not field_name or not column:
            raise DataError(f"--dataset_columns takes FIELD=COLUMN,..., got {value!r}")
        if field_name not in known:
            raise DataError(f"--dataset_columns {field_name}={column}: no format reads {field_name!r} "
                            f"(fields: {', '.join(known)})")
        mapping[column] = field_name
    return mapping


def map_columns(dataset_dict, mapping, source):
    """Rename the file's columns to the fields a format reads (--dataset_columns)."""
    columns = dataset_dict["train"].column_names
    for column, field_name in mapping.items():
        if column not in columns:
            raise DataError(f"{source}: --dataset_columns {field_name}={column}: no column {column!r} "
                            f"(columns: {', '.join(columns)})")
        if field_name in columns and field_name not in mapping:
            raise DataError(f"{source}: --dataset_columns {field_name}={column}: the file has a {field_name!r} "
                            "column already")
    return dataset_dict.rename_columns(mapping) if mapping else dataset_dict


def local_extension(path):
    """The file type a path names, compression included.

    >>> local_extension("data/train.JSONL.gz"), local_extension("rows.parquet"), local_extension("owner/name")
    ('.jsonl.gz', '.parquet', '')
    """
    stem, extension = os.path.splitext(path.lower())
    return os.path.splitext(stem)[1] + extension if extension == ".gz" else extension


def check_dataset_name(dataset):
    """Fail fast on a dataset that is neither built in nor a readable local file."""
    if dataset in HUB_DATASETS:
        return
    extension = local_extension(dataset)
    if extension and extension not in LOCAL_EXTENSIONS:
        raise DataError(f"{dataset}: unsupported file type {extension!r}; use one of {', '.join(LOCAL_EXTENSIONS)}")
    if extension and not os.path.isfile(dataset):
        raise DataError(f"{dataset}: no such file")
    if not extension and not is_hub_id(dataset):
        raise DataError(f"unknown dataset {dataset!r}; built-in: {', '.join(HUB_DATASETS)}, a hub id "
                        f"(owner/name), or a local {'/'.join(LOCAL_EXTENSIONS)} file")


def is_hub_id(dataset):
    """owner/name: a dataset repository on the hub (a path with a file extension is a local file)."""
    owner, _, name = dataset.partition("/")
    return bool(owner and name) and "/" not in name and not os.path.splitext(dataset)[1]


# What may stand between the items of a JSON list.
BETWEEN_ITEMS = re.compile(r"[\s,]*")


def json_reason(error):
    """A JSONDecodeError's reason with the column it points at, so that it reads whole.

    >>> json_reason(json.JSONDecodeError("Unterminated string starting at", '{"a": "b', 6))
    'Unterminated string starting at column 7'
    >>> json_reason(json.JSONDecodeError("Expecting value", '{"a": }', 6))
    'Expecting value at column 7'
    """
    return f"{error.msg}{'' if error.msg.endswith(' at') else ' at'} column {error.colno}"


def whole_json_error(path, text, error):
    """'path:line: invalid JSON (reason)' for a file read as one JSON document, saying when the file
    stops before the document does (a download or copy cut short)."""
    closing = {"[": "]", "{": "}"}.get(text.lstrip()[:1])
    cut = ("; the file ends before its JSON does: cut short?"
           if closing and not text.rstrip().endswith(closing) else "")
    return f"{path}:{error.lineno}: invalid JSON ({json_reason(error)}){cut}"


def non_object_item(path, text, items):
    """'path:line: ...' for the first item of a JSON list that is not an object (a row), else None."""
    decoder, position, line = json.JSONDecoder(), text.index("[") + 1, 1
    for number, item in enumerate(items, start=1):
        start = BETWEEN_ITEMS.match(text, position).end()
        line += text.count("\n", position, start)
        if not isinstance(item, dict):
            return f"{path}:{line}: item {number} of the list is {JSON_KINDS[type(item)]}, not a JSON object (a row)"
        _, end = decoder.raw_decode(text, start)
        line, position = line + text.count("\n", start, end), end
    return None


def find_json_error(path):
    """Why a JSON or JSON-lines file does not read as rows, as 'path:line: reason': the first line
    that does not parse, or the first row that is not a JSON object; None when neither is found.

    A file whose first line does not parse alone is one JSON document (an indented list or object),
    and its error is the document's. Lines are split at newlines only: a JSON string may hold U+2028.
    """
    with (gzip.open if path.lower().endswith(".gz") else open)(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as error:
        whole_error = error
    else:
        if isinstance(whole, list):
            return non_object_item(path, text, whole)
        return None if isinstance(whole, dict) else f"{path}: {JSON_KINDS[type(whole)]}, not rows (JSON objects)"
    if text.lstrip().startswith("["):
        return whole_json_error(path, text, whole_error)
    numbered = [(number, line) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    for number, line in numbered:
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            if number == numbered[0][0]:
                return whole_json_error(path, text, whole_error)
            return f"{path}:{number}: invalid JSON ({json_reason(error)})"
        if not isinstance(value, dict):
            return (f"{path}:{number}: {JSON_KINDS[type(value)]}, not a JSON object: each line of a JSON-lines "
                    "file is one row, an object of columns")
    return None


def innermost_reason(error):
    """The message of the error at the bottom of a chain (datasets wraps the reader's own error)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return str(error)


def rows_under_a_key(split_data):
    """The key of a JSON object read as one row whose value is the list of rows, else None.

    A file such as ``{"version": "1", "data": [{...}, ...]}`` reads as a single row whose columns
    fit no format; its rows are under one key, which --dataset_field names.
    """
    if len(split_data) != 1:
        return None
    row = split_data[0]
    return next((key for key, value in row.items()
                 if isinstance(value, list) and value and all(isinstance(item, dict) for item in value)), None)


def load_local_dataset(path, field=None):
    extension = local_extension(path)
    builder = LOCAL_EXTENSIONS[extension]
    kwargs = {"delimiter": "\t"} if extension == ".tsv" else {}
    if field is not None:
        if builder != "json":
            raise DataError(f"{path}: --dataset_field reads a key of a JSON object; this is a {extension} file")
        kwargs["field"] = field
    try:
        loaded = load_dataset(builder, data_files={"train": path}, **kwargs)
    except Exception as error:
        reason = find_json_error(path) if builder == "json" else None
        if reason is None and field is not None:
            reason = f"{path}: no list of rows under the key {field!r} (--dataset_field)"
        if reason is None:
            inner = innermost_reason(error)
            reason = f"{path}: could not be read ({error}{'' if inner == str(error) else f': {inner}'})"
        raise DataError(reason) from error
    return loaded


def load_hub_dataset(entry, cache_dir=None):
    try:
        return load_dataset(entry.path, name=entry.name, data_files=entry.data_files, cache_dir=cache_dir)
    except (ConnectionError, OSError) as error:
        raise DataError(f"could not load {entry.path} from the hub ({type(error).__name__}); "
                        "pass a local file with --dataset to work offline") from error


def load_raw_dataset(dataset, cache_dir=None, field=None):
    check_dataset_name(dataset)
    if dataset in HUB_DATASETS:
        return load_hub_dataset(HUB_DATASETS[dataset], cache_dir)
    if is_hub_id(dataset):
        loaded = load_hub_dataset(HubDataset(dataset, format=None), cache_dir)
        if "train" not in loaded:
            raise DataError(f"{dataset}: no 'train' split (splits: {', '.join(loaded)})")
        return loaded
    return load_local_dataset(dataset, field)


def check_row(row, data_format, needs):
    """The fields a format reads hold what it expects: a value in each needed one, text where text."""
    empty = [name for name in needs if row[name] is None]
    if empty:
        raise chat_data.ConversationError(f"has no value for {empty[0]!r}")
    wrong = [name for name in data_format.text if row.get(name) is not None and not isinstance(row[name], str)]
    if wrong:
        value = row[wrong[0]]
        raise chat_data.ConversationError(f"field {wrong[0]!r} holds a {type(value).__name__} ({value!r:.40}), "
                                          "not text")


def format_checked_row(row, index, data_format, needs, source, split):
    """One row through its format, checked before (fields) and after (something to train).

    A conversation keeps its row number, so a chat template that fails on it later names the row,
    and its tool keys and definitions in one text column (chat_data.stored_conversation). A format
    that skips rows gives each row SKIP_COLUMN: an unreadable row is an empty conversation that says
    why (errors.SkippedRow), left out after formatting (drop_skipped_rows) so row numbers stay true.
    """
    try:
        check_row(row, data_format, needs)
        formatted = data_format.format_row(row)
        if "output" in formatted and not formatted["output"].strip():
            raise chat_data.ConversationError("has an empty output: nothing to train")
        if "messages" not in formatted:
            return formatted
        tools = chat_data.row_tools(row.get("tools")) if "tools" in data_format.reads else []
        stored = {**chat_data.stored_conversation(formatted["messages"], tools), chat_data.ROW_COLUMN: index}
    except chat_data.ConversationError as error:
        if isinstance(error, SkippedRow) and data_format.skips_rows:
            return {"messages": [], chat_data.TOOL_COLUMN: None, chat_data.ROW_COLUMN: index,
                    **{column: 0 for column, _ in data_format.counts}, SKIP_COLUMN: str(error)}
        raise DataError(f"{source}: row {index + 1} of split {split!r}: {error}") from error
    counts = {column: formatted[column] for column, _ in data_format.counts}
    return {**stored, **counts, SKIP_COLUMN: None} if data_format.skips_rows else {**stored, **counts}


# Row numbers a log line lists before it stops.
LISTED_ROWS = 10


def drop_skipped_rows(split_data, source, split):
    """The split without the rows its format skipped, counted in one warning that lists them and says
    why the first was skipped; a split whose every row was skipped is refused."""
    skipped = [(row + 1, reason) for row, reason in zip(split_data[chat_data.ROW_COLUMN], split_data[SKIP_COLUMN])
               if reason is not None]
    if skipped and len(skipped) == len(split_data):
        raise DataError(f"{source}: no row of split {split!r} could be read; row {skipped[0][0]}: {skipped[0][1]}")
    if skipped:
        listed = ", ".join(str(number) for number, _ in skipped[:LISTED_ROWS])
        more = f" and {len(skipped) - LISTED_ROWS} more" if len(skipped) > LISTED_ROWS else ""
        logger.warning("%s: %d of %d rows of split %r skipped, unreadable (rows %s%s); row %d: %s", source,
                       len(skipped), len(split_data), split, listed, more, *skipped[0])
        split_data = split_data.filter(lambda reason: reason is None, input_columns=SKIP_COLUMN,
                                       desc="Dropping unreadable rows")
    return split_data.remove_columns(SKIP_COLUMN)


def report_counts(split_data, data_format, source, split):
    """The split without its format's count columns, each sum that is not 0 in the log."""
    for column, meaning in data_format.counts:
        total = sum(split_data[column])
        if total:
            logger.info("%s: split %r: %s", source, split, meaning.format(total))
    return split_data.remove_columns([column for column, _ in data_format.counts])


def check_columns(columns, format_name, source):
    """The columns the format needs (one of its alternatives), refusing media columns, which a
    text-only trainer would drop unseen."""
    media = [column for column in columns if column in MEDIA_COLUMNS]
    if media:
        raise DataError(f"{source}: column {media[0]!r} holds images, audio or video: this trainer is text-only; "
                        "drop the column and the <image>-style tags to train on the text")
    asked = replace(FORMATS[format_name], unless=())
    needs = format_fits(asked, set(columns))
    if needs is None:
        raise DataError(f"{source}: rows lack the columns {columns_rule(asked)} that --dataset_format {format_name} "
                        f"needs (columns: {', '.join(columns)}; --dataset_columns FIELD=COLUMN maps them)")
    return needs


def has_kto_label(split_data):
    return getattr(split_data.features.get(KTO_LABEL), "dtype", None) == "bool"


def keep_kto_desirable(split_data, source, split):
    """Drop the rows a KTO `label` marks undesirable (false): they show what not to write."""
    if not has_kto_label(split_data):
        return split_data
    kept = split_data.filter(lambda label: label is True, input_columns=KTO_LABEL)
    logger.info("%s: %d of %d rows of split %r skipped: their %s is false (undesirable replies are not trained)",
                source, len(split_data) - len(kept), len(split_data), split, KTO_LABEL)
    return kept


def unused_columns(split_data, data_format):
    """The columns a format reads in no row (a chat file may mix messages and conversations rows)."""
    reads = {column for alternative in data_format.needs for column in alternative} | set(data_format.reads)
    reads |= {KTO_LABEL} if has_kto_label(split_data) else set()
    return [column for column in split_data.column_names if column not in reads]


def formatted_features(split_data, data_format):
    """The columns a split's formatted rows are written in, None where datasets may infer them: the
    conversation columns for a file with `messages` (see CONVERSATION_FEATURES) or for a
    format that skips rows (whose empty conversations say nothing of the columns' types)."""
    if not data_format.skips_rows:
        return CONVERSATION_FEATURES if "messages" in split_data.column_names else None
    return Features({**CONVERSATION_FEATURES, **{column: Value("int64") for column, _ in data_format.counts},
                     SKIP_COLUMN: Value("string")})


def apply_format(dataset_dict, format_name, source):
    """Turn every split into input/output rows or conversations; a bad row is named (a row a format
    skips is counted in the log instead), and every column the format does not read is named once
    in the log."""
    data_format = FORMATS[format_name]
    formatted = {}
    for split, split_data in dataset_dict.items():
        needs = check_columns(split_data.column_names, format_name, source)
        unused = unused_columns(split_data, data_format)
        if unused and split == "train":
            logger.info("%s: columns not used by format %s: %s", source, format_name, ", ".join(unused))
        split_data = keep_kto_desirable(split_data, source, split)
        formatted[split] = report_counts(map_rows(
            split_data, format_checked_row, with_indices=True,
            fn_kwargs={"data_format": data_format, "needs": needs, "source": source, "split": split},
            remove_columns=[c for c in split_data.column_names if c not in FORMATTED_COLUMNS],
            features=formatted_features(split_data, data_format),
        ), data_format, source, split)
        if data_format.skips_rows:
            formatted[split] = drop_skipped_rows(formatted[split], source, split)
    return DatasetDict(formatted)


def tokenize_rows(batch, tokenizer, source_max_len, target_max_len):
    """bos + source and target + eos, each cut to its own budget (the reference's recipe).

    A cut source keeps its start (the instruction), as the reference's did. A cut target keeps no
    eos: it stops mid-sentence, and an eos there would teach the model to stop mid-sentence (TRL's
    SFT truncation likewise cuts the tail; benchmarks/cut_target_eos.py measures it, docs/BENCHMARKS.md).
    The tokens each side lost are kept for the log.
    """
    sources = [f"{tokenizer.bos_token or ''}{text}" for text in batch["input"]]
    targets = [f"{text}{tokenizer.eos_token}" for text in batch["output"]]
    full_sources = tokenizer(sources, add_special_tokens=False)["input_ids"]
    full_targets = tokenizer(targets, add_special_tokens=False)["input_ids"]
    source_ids = [ids[:source_max_len] for ids in full_sources]
    target_ids = [ids[:target_max_len] for ids in full_targets]
    return {
        "source_ids": source_ids,
        "target_ids": target_ids,
        "length": [len(s) + len(t) for s, t in zip(source_ids, target_ids)],
        "source_dropped": [len(full) - len(kept) for full, kept in zip(full_sources, source_ids)],
        "target_dropped": [len(full) - len(kept) for full, kept in zip(full_targets, target_ids)],
    }


@dataclass(frozen=True)
class TruncationCount:
    """How many rows lost tokens, and how many tokens each side lost."""
    rows: int
    cut_rows: int
    source_rows: int
    source_tokens: int
    target_rows: int
    target_tokens: int

    @property
    def cut_share(self):
        return self.cut_rows / self.rows if self.rows else 0.0


def count_truncation(source_dropped, target_dropped):
    """Rows and tokens cut, from the tokens each row's source and target lost.

    >>> count_truncation([0, 2, 0], [5, 0, 0])
    TruncationCount(rows=3, cut_rows=2, source_rows=1, source_tokens=2, target_rows=1, target_tokens=5)
    """
    return TruncationCount(
        rows=len(source_dropped),
        cut_rows=sum(1 for s, t in zip(source_dropped, target_dropped) if s or t),
        source_rows=sum(1 for s in source_dropped if s), source_tokens=sum(source_dropped),
        target_rows=sum(1 for t in target_dropped if t), target_tokens=sum(target_dropped),
    )


def report_truncation(count, source_max_len, target_max_len, max_truncated_share, split):
    """One log line with the cuts; a warning when more rows than --max_truncated_share were cut."""
    if not count.cut_rows:
        logger.info("%s: no row cut (--source_max_len %d, --target_max_len %d)", split, source_max_len, target_max_len)
        return
    line = (f"{split}: {count.cut_rows} of {count.rows} rows cut: {count.source_rows} sources lost "
            f"{count.source_tokens} tokens beyond --source_max_len {source_max_len} (their start is kept), "
            f"{count.target_rows} targets lost {count.target_tokens} tokens beyond --target_max_len "
            f"{target_max_len} (a cut target has no eos)")
    if count.cut_share > max_truncated_share:
        logger.warning("%s; that is %.0f%% of the rows, above --max_truncated_share %g: raise the limits "
                       "(--preview_data prints the lengths) or --max_truncated_share", line, 100 * count.cut_share,
                       max_truncated_share)
    else:
        logger.info(line)


def tokenize_dataset(dataset, tokenizer, source_max_len, target_max_len, max_truncated_share=1.0, split="train"):
    """Tokenized rows (source_ids, target_ids, length and the tokens each side lost), cuts logged."""
    tokenized = map_rows(
        dataset,
        tokenize_rows,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "source_max_len": source_max_len, "target_max_len": target_max_len},
        desc="Tokenizing",
    )
    count = count_truncation(tokenized["source_dropped"], tokenized["target_dropped"])
    report_truncation(count, source_max_len, target_max_len, max_truncated_share, split)
    return tokenized


def split_train_eval(dataset_dict, data_args, hold_out_eval):
    """Train and eval splits as the reference picks them: an 'eval' split, or a seeded hold-out."""
    train, evaluation = dataset_dict["train"], None
    if hold_out_eval:
        if "eval" in dataset_dict:
            evaluation = dataset_dict["eval"]
        else:
            if data_args.eval_dataset_size >= len(train):
                raise DataError(f"--eval_dataset_size {data_args.eval_dataset_size} leaves no training rows "
                                f"out of {len(train)}")
            held_out = train.train_test_split(test_size=data_args.eval_dataset_size, shuffle=True, seed=42)
            train, evaluation = held_out["train"], held_out["test"]
        if data_args.max_eval_samples is not None and len(evaluation) > data_args.max_eval_samples:
            evaluation = evaluation.select(range(data_args.max_eval_samples))
    if data_args.max_train_samples is not None and len(train) > data_args.max_train_samples:
        train = train.select(range(data_args.max_train_samples))
    return train, evaluation


def chat_tokenizer(data_args, tokenizer, source, uses_tools):
    """The function that tokenizes conversations with the chosen template, checked up front; `uses_tools`:
    some conversation carries tools (a tokenizer's named templates then give tool_use)."""
    try:
        template, description = chat_data.resolve_chat_template(data_args.chat_template, tokenizer, uses_tools)
        chat_data.check_template(tokenizer, template, description)
    except chat_data.ConversationError as error:
        raise DataError(str(error)) from error
    max_len = data_args.max_seq_len or data_args.source_max_len + data_args.target_max_len
    logger.info("chat template: %s; conversations up to %d tokens", description, max_len)
    return lambda ds, split: chat_data.tokenize_chat_dataset(ds, tokenizer, template, max_len, source)


MIX_SEED = 42  # the seed of the eval hold-out too


def without_unrendered_system(raw, format_name, data_args, tokenizer, source):
    """The rows without their format's optional system column when the chat template has no system
    layout (--chat_template firefly), that column named in the log as not used."""
    column = FORMATS[format_name].optional_system
    if column is None or column not in raw["train"].column_names:
        return raw
    try:
        if chat_data.has_system_layout(data_args.chat_template, tokenizer):
            return raw
    except chat_data.ConversationError as error:
        raise DataError(str(error)) from error
    logger.info("%s: columns not used by format %s: %s (the chat template %s has no system layout)", source,
                format_name, column, chat_data.template_name(data_args.chat_template, tokenizer))
    return raw.remove_columns(column)


def load_formatted(dataset, data_args, cache_dir, tokenizer=None):
    """(formatted DatasetDict, format name) of one source of --dataset; the tokenizer's template (or
    --chat_template) decides whether a format's optional system column is written."""
    raw = load_raw_dataset(dataset, cache_dir, data_args.dataset_field)
    raw = map_columns(raw, parse_column_mapping(data_args.dataset_columns), dataset)
    try:
        format_name = resolve_format(dataset, data_args.dataset_format, raw["train"].column_names)
    except DataError as error:
        key = rows_under_a_key(raw["train"]) if data_args.dataset_field is None else None
        if key is None:
            raise
        raise DataError(f"{dataset}: one JSON object holding its rows under {key!r}; pass --dataset_field {key}") \
            from error
    raw = without_unrendered_system(raw, format_name, data_args, tokenizer, dataset)
    return apply_format(raw, format_name, dataset), format_name


def mix_sources(sources):
    """One DatasetDict of several formatted sources [(name, DatasetDict, format)], shuffled with a
    fixed seed, its rows counted per source in the log. An 'eval' split is kept only when every
    source has one; otherwise the eval rows are held out of the mix, so every source may give some."""
    kinds = {name: "messages" in d["train"].column_names for name, d, _ in sources}
    if len(set(kinds.values())) > 1:
        conversations = ", ".join(name for name, is_chat in kinds.items() if is_chat)
        raise DataError(f"--dataset mixes conversations ({conversations}) with input/output rows "
                        f"({', '.join(name for name, is_chat in kinds.items() if not is_chat)}); train them apart")
    logger.info("--dataset mixes %d sources: %s", len(sources),
                ", ".join(f"{name} ({format_name}, {len(d['train'])} rows)" for name, d, format_name in sources))
    splits = ["train"] + (["eval"] if all("eval" in d for _, d, _ in sources) else [])
    return DatasetDict({split: concatenate_datasets([d[split] for _, d, _ in sources]).shuffle(seed=MIX_SEED)
                        for split in splits})


def trained_template(data_args, tokenizer, format_name, chat, uses_tools=False):
    """The record (qlorakit.trained_template) of the prompt layout the rows are trained in: the
    resolved --chat_template for conversations, Guanaco's for formats written in its markers,
    None for layouts no chat template writes."""
    if chat:
        name = chat_data.template_name(data_args.chat_template, tokenizer, uses_tools)
        return template_record(name, chat_data.resolve_chat_template(name, tokenizer)[0])
    if format_name in GUANACO_LAYOUT_FORMATS:
        return template_record("guanaco", chat_data.GUANACO_TEMPLATE)
    return None


def build_datasets(data_args, tokenizer, cache_dir=None, hold_out_eval=False):
    """Tokenized train and eval datasets (eval is None unless hold_out_eval: evaluating or predicting).

    --dataset may name several sources separated by commas, each read in its own format. Also
    returns the record of the prompt template the rows are written in (trained_template)."""
    if tokenizer.eos_token is None:  # every answer ends with eos text: it would read "None"
        raise DataError(f"the tokenizer of {tokenizer.name_or_path} has no eos token, which ends each trained "
                        "answer: set eos_token in its tokenizer_config.json")
    names = [name.strip() for name in data_args.dataset.split(",") if name.strip()]
    sources = [(name, *load_formatted(name, data_args, cache_dir, tokenizer)) for name in names]
    if len(sources) == 1:
        _, formatted, format_name = sources[0]
    else:
        formats = {format_name for _, _, format_name in sources}
        formatted, format_name = mix_sources(sources), (formats.pop() if len(formats) == 1 else None)
    train, evaluation = split_train_eval(formatted, data_args, hold_out_eval)
    chat = "messages" in train.column_names
    uses_tools = chat and any(chat_data.first_tool_row(ds) is not None for ds in (train, evaluation) if ds is not None)
    if chat:
        tokenize = chat_tokenizer(data_args, tokenizer, data_args.dataset, uses_tools)
    else:
        tokenize = lambda ds, split: tokenize_dataset(ds, tokenizer, data_args.source_max_len, data_args.target_max_len,
                                                      data_args.max_truncated_share, split)
    template = trained_template(data_args, tokenizer, format_name, chat, uses_tools)
    return tokenize(train, "train"), (tokenize(evaluation, "eval") if evaluation is not None else None), template
