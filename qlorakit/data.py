"""Datasets: the built-in registry, row formats, detection, loading and tokenization.

Every dataset but conversations is reduced to rows of ``{"input", "output"}`` text: the model
learns to write the output after the input. Conversations (the chat format, qlorakit.chat_data)
are rendered whole and carry a per-token mask of their assistant turns instead. Rows are
tokenized once, up front (cached by datasets), so a training step only pads; the reference
tokenized every micro-batch again inside its collator. Batching the tokenized rows is
qlorakit.collate's job.
"""

import json
import logging
import os
from dataclasses import dataclass

from datasets import DatasetDict, load_dataset

from . import chat_data
from .errors import DataError

logger = logging.getLogger(__name__)

LOCAL_EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv"}

# Our own wording of the instruction/input/response layout used by Alpaca-style data.
ALPACA_TEMPLATE_WITH_INPUT = (
    "Complete the task described by the instruction, using the input as context.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response: "
)
ALPACA_TEMPLATE_NO_INPUT = (
    "Complete the task described by the instruction.\n\n### Instruction:\n{instruction}\n\n### Response: "
)


def format_alpaca(row):
    template = ALPACA_TEMPLATE_WITH_INPUT if row.get("input") else ALPACA_TEMPLATE_NO_INPUT
    return {"input": template.format(instruction=row["instruction"], input=row.get("input", "")),
            "output": row["output"]}


def format_chip2(row):
    human, _, bot = row["text"].partition("\n<bot>: ")
    return {"input": human.replace("<human>: ", ""), "output": bot}


def format_self_instruct(row):
    return {"input": row["prompt"], "output": row["completion"]}


def format_hh_rlhf(row):
    return {"input": "", "output": row["chosen"]}


def format_oasst1(row):
    return {"input": "", "output": row["text"]}


def format_input_output(row):
    return {"input": row["input"], "output": row["output"]}


def format_chat(row):
    return {"messages": chat_data.normalize_conversation(row)}


FORMATS = {
    "alpaca": (format_alpaca, ("instruction", "output")),
    "chip2": (format_chip2, ("text",)),
    "self-instruct": (format_self_instruct, ("prompt", "completion")),
    "hh-rlhf": (format_hh_rlhf, ("chosen",)),
    "oasst1": (format_oasst1, ("text",)),
    "input-output": (format_input_output, ("input", "output")),
    "chat": (format_chat, ()),  # messages or conversations: checked row by row
}
FORMATTED_COLUMNS = ("input", "output", "messages")

# How a local file's columns name its format: (format, columns it needs, columns it must lack).
# Alpaca rows have input and output too; the instruction column tells them apart.
DETECTION_RULES = (
    ("chat", {"messages"}, set()),
    ("chat", {"conversations"}, set()),
    ("alpaca", {"instruction", "output"}, set()),
    ("self-instruct", {"prompt", "completion"}, set()),
    ("oasst1", {"text"}, set()),
    ("input-output", {"input", "output"}, {"instruction"}),
)


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


def detect_format(columns, source):
    """The one format whose columns the data has; none or several is an error listing both."""
    present = set(columns)
    found = sorted({name for name, needs, lacks in DETECTION_RULES if needs <= present and not lacks & present})
    if len(found) != 1:
        fits = f"they fit {' and '.join(found)}" if found else "they fit no format"
        columns_of = {}
        for name, needs, _ in DETECTION_RULES:
            columns_of.setdefault(name, []).append(" + ".join(sorted(needs)))
        rules = "; ".join(f"{name}: {' or '.join(alternatives)}" for name, alternatives in columns_of.items())
        raise DataError(f"{source}: cannot tell the format from the columns ({', '.join(columns)}): {fits}; "
                        f"pass --dataset_format ({rules})")
    logger.info("%s: dataset format %s, detected from the columns (%s); --dataset_format overrides",
                source, found[0], ", ".join(columns))
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


def check_dataset_name(dataset):
    """Fail fast on a dataset that is neither built in nor a readable local file."""
    if dataset in HUB_DATASETS:
        return
    extension = os.path.splitext(dataset)[1].lower()
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


def find_json_error(path):
    """The first line of a JSON or JSON-lines file that does not parse, as 'path:line: reason'."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as whole_error:
        if text.lstrip().startswith("["):
            return f"{path}:{whole_error.lineno}: invalid JSON ({whole_error.msg})"
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as error:
            return f"{path}:{number}: invalid JSON ({error.msg})"
    return None


def load_local_dataset(path):
    extension = os.path.splitext(path)[1].lower()
    builder = LOCAL_EXTENSIONS[extension]
    kwargs = {"delimiter": "\t"} if extension == ".tsv" else {}
    try:
        return load_dataset(builder, data_files={"train": path}, **kwargs)
    except Exception as error:
        reason = find_json_error(path) if builder == "json" else None
        raise DataError(reason or f"{path}: could not be read ({error})") from error


def load_hub_dataset(entry, cache_dir=None):
    try:
        return load_dataset(entry.path, name=entry.name, data_files=entry.data_files, cache_dir=cache_dir)
    except (ConnectionError, OSError) as error:
        raise DataError(f"could not load {entry.path} from the hub ({type(error).__name__}); "
                        "pass a local file with --dataset to work offline") from error


def load_raw_dataset(dataset, cache_dir=None):
    check_dataset_name(dataset)
    if dataset in HUB_DATASETS:
        return load_hub_dataset(HUB_DATASETS[dataset], cache_dir)
    if is_hub_id(dataset):
        loaded = load_hub_dataset(HubDataset(dataset, format=None), cache_dir)
        if "train" not in loaded:
            raise DataError(f"{dataset}: no 'train' split (splits: {', '.join(loaded)})")
        return loaded
    return load_local_dataset(dataset)


def format_checked_row(row, index, formatter, required, source, split):
    """One row through its formatter, after checking it has every field the format reads."""
    empty = [name for name in required if row[name] is None]
    if empty:
        raise DataError(f"{source}: row {index + 1} of split {split!r} has no value for {empty[0]!r}")
    try:
        return formatter(row)
    except chat_data.ConversationError as error:
        raise DataError(f"{source}: row {index + 1} of split {split!r}: {error}") from error


def apply_format(dataset_dict, format_name, source):
    """Turn every split into input/output rows; a row missing a needed field is named."""
    formatter, required = FORMATS[format_name]
    formatted = {}
    for split, split_data in dataset_dict.items():
        missing = [name for name in required if name not in split_data.column_names]
        if missing:
            raise DataError(f"{source}: rows lack the field {missing[0]!r} that --dataset_format {format_name} "
                            f"needs (columns: {', '.join(split_data.column_names)})")
        formatted[split] = split_data.map(
            format_checked_row, with_indices=True,
            fn_kwargs={"formatter": formatter, "required": required, "source": source, "split": split},
            remove_columns=[c for c in split_data.column_names if c not in FORMATTED_COLUMNS],
        )
    return DatasetDict(formatted)


def tokenize_rows(batch, tokenizer, source_max_len, target_max_len):
    """bos + source and target + eos, each truncated to its own budget (the reference's recipe)."""
    sources = [f"{tokenizer.bos_token or ''}{text}" for text in batch["input"]]
    targets = [f"{text}{tokenizer.eos_token}" for text in batch["output"]]
    source_ids = tokenizer(sources, max_length=source_max_len, truncation=True, add_special_tokens=False)
    target_ids = tokenizer(targets, max_length=target_max_len, truncation=True, add_special_tokens=False)
    return {
        "source_ids": source_ids["input_ids"],
        "target_ids": target_ids["input_ids"],
        "length": [len(s) + len(t) for s, t in zip(source_ids["input_ids"], target_ids["input_ids"])],
    }


def tokenize_dataset(dataset, tokenizer, source_max_len, target_max_len):
    return dataset.map(
        tokenize_rows,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "source_max_len": source_max_len, "target_max_len": target_max_len},
        desc="Tokenizing",
    )


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


def chat_tokenizer(data_args, tokenizer):
    """The function that tokenizes conversations with the chosen template, checked up front."""
    try:
        template, description = chat_data.resolve_chat_template(data_args.chat_template, tokenizer)
        chat_data.check_template(tokenizer, template, description)
    except chat_data.ConversationError as error:
        raise DataError(str(error)) from error
    max_len = data_args.max_seq_len or data_args.source_max_len + data_args.target_max_len
    logger.info("chat template: %s; conversations up to %d tokens", description, max_len)
    return lambda ds: chat_data.tokenize_chat_dataset(ds, tokenizer, template, max_len)


def build_datasets(data_args, tokenizer, cache_dir=None, hold_out_eval=False):
    """Tokenized train and eval datasets (eval is None unless hold_out_eval: evaluating or predicting)."""
    if tokenizer.eos_token is None:  # every answer ends with eos text: it would read "None"
        raise DataError(f"the tokenizer of {tokenizer.name_or_path} has no eos token, which ends each trained "
                        "answer: set eos_token in its tokenizer_config.json")
    raw = load_raw_dataset(data_args.dataset, cache_dir)
    format_name = resolve_format(data_args.dataset, data_args.dataset_format, raw["train"].column_names)
    formatted = apply_format(raw, format_name, data_args.dataset)
    train, evaluation = split_train_eval(formatted, data_args, hold_out_eval)
    if format_name == "chat":
        tokenize = chat_tokenizer(data_args, tokenizer)
    else:
        tokenize = lambda ds: tokenize_dataset(ds, tokenizer, data_args.source_max_len, data_args.target_max_len)
    return tokenize(train), (tokenize(evaluation) if evaluation is not None else None)
