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
from dataclasses import dataclass

from datasets import DatasetDict, concatenate_datasets, load_dataset

from . import chat_data
from .errors import DataError

logger = logging.getLogger(__name__)

# Local file types and the datasets builder that reads each (gzip-compressed JSON is unpacked by datasets).
LOCAL_EXTENSIONS = {".json": "json", ".jsonl": "json", ".json.gz": "json", ".jsonl.gz": "json", ".csv": "csv",
                    ".tsv": "csv", ".parquet": "parquet"}

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


def format_firefly(row):
    """Firefly's rows: a list of {"human", "assistant"} exchanges under 'conversation'."""
    exchanges = row["conversation"]
    if not isinstance(exchanges, list) or not all(isinstance(e, dict) for e in exchanges):
        raise chat_data.ConversationError("'conversation' is not a list of {\"human\", \"assistant\"} objects")
    messages = [{"role": role, "content": exchange.get(key)} for exchange in exchanges
                for role, key in (("user", "human"), ("assistant", "assistant"))]
    return {"messages": chat_data.normalize_conversation({"messages": messages})}


FORMATS = {
    "alpaca": (format_alpaca, ("instruction", "output")),
    "chip2": (format_chip2, ("text",)),
    "self-instruct": (format_self_instruct, ("prompt", "completion")),
    "hh-rlhf": (format_hh_rlhf, ("chosen",)),
    "oasst1": (format_oasst1, ("text",)),
    "input-output": (format_input_output, ("input", "output")),
    "chat": (format_chat, ()),  # messages or conversations: checked row by row
    "firefly": (format_firefly, ("conversation",)),
}
CONVERSATION_FORMATS = ("chat", "firefly")  # rows of messages, tokenized by qlorakit.chat_data
FORMATTED_COLUMNS = ("input", "output", "messages")

# How a local file's columns name its format: (format, columns it needs, columns it must lack).
# Alpaca rows have input and output too; the instruction column tells them apart.
DETECTION_RULES = (
    ("chat", {"messages"}, set()),
    ("chat", {"conversations"}, set()),
    ("firefly", {"conversation"}, set()),
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


def find_json_error(path):
    """The first line of a JSON or JSON-lines file that does not parse, as 'path:line: reason'."""
    with (gzip.open if path.lower().endswith(".gz") else open)(path, "rt", encoding="utf-8") as handle:
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
        raise DataError(reason or f"{path}: could not be read ({error})") from error
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
    """bos + source and target + eos, each cut to its own budget (the reference's recipe).

    A cut source keeps its start (the instruction), as the reference's did. A cut target keeps no
    eos: it stops mid-sentence, and an eos there would teach the model to stop mid-sentence (TRL's
    SFT truncation likewise cuts the tail). The tokens each side lost are kept for the log.
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
    tokenized = dataset.map(
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


def chat_tokenizer(data_args, tokenizer):
    """The function that tokenizes conversations with the chosen template, checked up front."""
    try:
        template, description = chat_data.resolve_chat_template(data_args.chat_template, tokenizer)
        chat_data.check_template(tokenizer, template, description)
    except chat_data.ConversationError as error:
        raise DataError(str(error)) from error
    max_len = data_args.max_seq_len or data_args.source_max_len + data_args.target_max_len
    logger.info("chat template: %s; conversations up to %d tokens", description, max_len)
    return lambda ds, split: chat_data.tokenize_chat_dataset(ds, tokenizer, template, max_len)


MIX_SEED = 42  # the seed of the eval hold-out too


def load_formatted(dataset, data_args, cache_dir):
    """(formatted DatasetDict, format name) of one source of --dataset."""
    raw = load_raw_dataset(dataset, cache_dir, data_args.dataset_field)
    try:
        format_name = resolve_format(dataset, data_args.dataset_format, raw["train"].column_names)
    except DataError as error:
        key = rows_under_a_key(raw["train"]) if data_args.dataset_field is None else None
        if key is None:
            raise
        raise DataError(f"{dataset}: one JSON object holding its rows under {key!r}; pass --dataset_field {key}") \
            from error
    return apply_format(raw, format_name, dataset), format_name


def mix_sources(sources):
    """One DatasetDict of several formatted sources [(name, DatasetDict, format)], shuffled with a
    fixed seed, its rows counted per source in the log. An 'eval' split is kept only when every
    source has one; otherwise the eval rows are held out of the mix, so every source may give some."""
    kinds = {name: format_name in CONVERSATION_FORMATS for name, _, format_name in sources}
    if len(set(kinds.values())) > 1:
        conversations = ", ".join(name for name, is_chat in kinds.items() if is_chat)
        raise DataError(f"--dataset mixes conversations ({conversations}) with input/output rows "
                        f"({', '.join(name for name, is_chat in kinds.items() if not is_chat)}); train them apart")
    logger.info("--dataset mixes %d sources: %s", len(sources),
                ", ".join(f"{name} ({format_name}, {len(d['train'])} rows)" for name, d, format_name in sources))
    splits = ["train"] + (["eval"] if all("eval" in d for _, d, _ in sources) else [])
    return DatasetDict({split: concatenate_datasets([d[split] for _, d, _ in sources]).shuffle(seed=MIX_SEED)
                        for split in splits})


def build_datasets(data_args, tokenizer, cache_dir=None, hold_out_eval=False):
    """Tokenized train and eval datasets (eval is None unless hold_out_eval: evaluating or predicting).

    --dataset may name several sources separated by commas, each read in its own format."""
    names = [name.strip() for name in data_args.dataset.split(",") if name.strip()]
    sources = [(name, *load_formatted(name, data_args, cache_dir)) for name in names]
    if len(sources) == 1:
        _, formatted, format_name = sources[0]
    else:
        formatted, format_name = mix_sources(sources), sources[0][2]
    train, evaluation = split_train_eval(formatted, data_args, hold_out_eval)
    if format_name in CONVERSATION_FORMATS:
        tokenize = chat_tokenizer(data_args, tokenizer)
    else:
        tokenize = lambda ds, split: tokenize_dataset(ds, tokenizer, data_args.source_max_len, data_args.target_max_len,
                                                      data_args.max_truncated_share, split)
    return tokenize(train, "train"), (tokenize(evaluation, "eval") if evaluation is not None else None)
