"""Cutting long conversations to --max_seq_len: bisection against a scan of every prefix.

    python benchmarks/chat_truncation.py [--turns 10 40 80] [--max_len 512] [--repeats 3] [--json]

Synthetic conversations of N exchanges (a question and a reply each), rendered with the Guanaco
template and the tiny tokenizer (trained here on the bundled sample data), are cut to --max_len
tokens two ways, in turn, in one process: qlorakit.chat_data.fit_conversation, which bisects over
the assistant turns, and a scan that encodes every prefix from the longest down until one fits
(how fit_conversation worked before). Both must return the same tokens and mask. Reported: the
median milliseconds per conversation of each and their ratio.
"""

import argparse
import json
import statistics
import time

from qlorakit import SAMPLE_DATA_DIR
from qlorakit.chat_data import GUANACO_TEMPLATE, encode_conversation, fit_conversation
from qlorakit.cli.make_tiny_model import train_tokenizer


def conversation(exchanges):
    messages = []
    for turn in range(exchanges):
        messages.append({"role": "user", "content": f"Question {turn}: why do leaves change colour in autumn? " * 3})
        messages.append({"role": "assistant", "content": f"Answer {turn}: the green pigment breaks down first. " * 6})
    return messages


def scan_every_prefix(tokenizer, template, messages, max_len):
    ends = [index + 1 for index, message in enumerate(messages) if message["role"] == "assistant"]
    for end in reversed(ends):
        ids, mask = encode_conversation(tokenizer, template, messages[:end])
        if len(ids) <= max_len:
            return ids, mask, end != ends[-1]
    return ids[:max_len], mask[:max_len], True


def milliseconds(cut, tokenizer, messages, max_len, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = cut(tokenizer, GUANACO_TEMPLATE, messages, max_len)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, nargs="+", default=[10, 40, 80], help="exchanges per conversation")
    parser.add_argument("--max_len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    tokenizer = train_tokenizer(SAMPLE_DATA_DIR, vocab_size=2048)
    rows = []
    for exchanges in args.turns:
        messages = conversation(exchanges)
        scan_ms, expected = milliseconds(scan_every_prefix, tokenizer, messages, args.max_len, args.repeats)
        bisect_ms, result = milliseconds(fit_conversation, tokenizer, messages, args.max_len, args.repeats)
        if result != expected:
            raise SystemExit(f"{exchanges} exchanges: bisection and scan disagree")
        rows.append({"exchanges": exchanges, "tokens_kept": len(result[0]), "scan_ms": round(scan_ms, 1),
                     "bisect_ms": round(bisect_ms, 1), "speedup": round(scan_ms / bisect_ms, 2)})
    if args.json:
        print(json.dumps({"max_len": args.max_len, "repeats": args.repeats, "rows": rows}))
        return
    print(f"max_len {args.max_len}, median of {args.repeats}")
    print(f"{'exchanges':>10}{'kept':>8}{'scan ms':>10}{'bisect ms':>11}{'speedup':>9}")
    for row in rows:
        print(f"{row['exchanges']:>10}{row['tokens_kept']:>8}{row['scan_ms']:>10}{row['bisect_ms']:>11}{row['speedup']:>9}")


if __name__ == "__main__":
    main()
