"""--preview_data: the first training rows as the model sees them, with the trained text marked.

Rows go through the training collator, so what is marked is exactly what carries a label. On a
terminal the trained text is green; piped, it sits between ``[[`` and ``]]``; with
``--preview_format json`` each row is one ``{"segments": [{"text", "trained"}]}`` line whose
texts concatenate to the decoded row.
"""

import json
import math

from .chat_data import common_prefix_length
from .collate import IGNORE_INDEX, CausalLMCollator

TRAINED_COLOUR, RESET = "\033[32m", "\033[0m"
TRAINED_BRACKETS = ("[[", "]]")


def trained_runs(flags):
    """[(start, end, trained)] runs of equal flags.

    >>> trained_runs([False, True, True, False])
    [(0, 1, False), (1, 3, True), (3, 4, False)]
    """
    runs, start = [], 0
    for index in range(1, len(flags) + 1):
        if index == len(flags) or flags[index] != flags[start]:
            runs.append((start, index, flags[start]))
            start = index
    return runs


def row_segments(ids, flags, decode):
    """Decoded text split where training starts or stops; the texts join to decode(ids).

    Each boundary is where the decoded prefix stops matching the whole text, so a character
    whose bytes straddle a boundary stays whole in one segment.
    """
    text, segments, start_char = decode(ids), [], 0
    for _, end, trained in trained_runs(flags):
        end_char = len(text) if end == len(ids) else max(start_char, common_prefix_length(decode(ids[:end]), text))
        piece = text[start_char:end_char]
        if segments and segments[-1]["trained"] == trained:
            segments[-1]["text"] += piece
        elif piece:
            segments.append({"text": piece, "trained": bool(trained)})
        start_char = end_char
    return segments


def mark_segments(segments, colour):
    """One string with the trained text coloured (terminal) or bracketed (pipes, files)."""
    opening, closing = (TRAINED_COLOUR, RESET) if colour else TRAINED_BRACKETS
    return "".join(f"{opening}{s['text']}{closing}" if s["trained"] else s["text"] for s in segments)


def preview_rows(dataset, tokenizer, count, train_on_source, output_format, colour, write):
    """Write the first `count` rows of a tokenized training dataset."""
    collator = CausalLMCollator(tokenizer.pad_token_id, train_on_source=train_on_source)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)  # noqa: E731
    for number in range(min(count, len(dataset))):
        row = collator.training_row(dataset[number])
        flags = [label != IGNORE_INDEX for label in row["labels"]]
        segments = row_segments(row["input_ids"], flags, decode)
        if output_format == "json":
            write(json.dumps({"segments": segments}, ensure_ascii=False) + "\n")
        else:
            write(f"=== row {number + 1}: {len(flags)} tokens, {sum(flags)} trained ===\n"
                  f"{mark_segments(segments, colour)}\n")


def percentile(sorted_values, share):
    """The nearest-rank percentile of already sorted values.

    >>> percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9)
    9
    """
    return sorted_values[max(0, math.ceil(len(sorted_values) * share) - 1)] if sorted_values else 0


def length_rows(dataset, limits):
    """[(name, sorted lengths before any cut, limit)] of the sides a tokenized dataset records."""
    if "source_dropped" not in dataset.column_names:  # conversations: only their length as kept
        return [("conversation (as kept)", sorted(dataset["length"]), limits["total"])]
    sources = [len(ids) + dropped for ids, dropped in zip(dataset["source_ids"], dataset["source_dropped"])]
    targets = [len(ids) + dropped for ids, dropped in zip(dataset["target_ids"], dataset["target_dropped"])]
    return [("source", sorted(sources), limits["source"]), ("target", sorted(targets), limits["target"]),
            ("total", sorted(s + t for s, t in zip(sources, targets)), limits["total"])]


def length_summary(dataset, limits):
    """Token-length percentiles of every row against the limits, to choose the limits from the data."""
    lines = [f"=== lengths of {len(dataset)} training rows, in tokens ===",
             f"{'':24}{'p50':>7}{'p90':>7}{'p99':>7}{'max':>7}{'limit':>7}{'over':>7}"]
    for name, lengths, limit in length_rows(dataset, limits):
        cells = "".join(f"{percentile(lengths, share):>7}" for share in (0.5, 0.9, 0.99, 1.0))
        over = sum(1 for length in lengths if length > limit)
        lines.append(f"{name:24}{cells}{limit:>7}{over:>7}")
    return "\n".join(lines) + "\n"
