"""Fetch the two chatbot benchmarks of the QLoRA paper into the questions format.

The project ships no one else's question sets; this script downloads them from their public
sources at run time (network needed only here):

- Vicuna: the 80 questions of FastChat's first evaluation (``question_id``, ``text``,
  ``category``), from the FastChat repository;
- OpenAssistant (OA): the user queries of the OASST1 validation split, each with its
  conversation so far formatted as "### Human: ... ### Assistant: ... ### Human: ... ###
  Assistant:" and the best-ranked assistant reply as ``output`` (the paper's OA benchmark), read
  page by page from the Hugging Face datasets-server rows API.

    python eval/download_benchmarks.py --out-dir data/benchmarks            # both
    python eval/download_benchmarks.py --out-dir data/benchmarks --only vicuna

Writes vicuna_questions.jsonl and oa_questions.jsonl under --out-dir.
"""

import argparse
import json
import logging
import os
import sys
import urllib.parse
import urllib.request

from judgekit import cli
from judgekit.errors import InputError
from qlorakit.chat_format import ASSISTANT, HUMAN
from qlorakit.errors import run_main
from qlorakit.jsonl import write_jsonl_atomic

logger = logging.getLogger("download_benchmarks")

VICUNA_URL = "https://raw.githubusercontent.com/lm-sys/FastChat/v0.2.3/fastchat/eval/table/question.jsonl"
OASST_ROWS_URL = "https://datasets-server.huggingface.co/rows"
OASST_DATASET = "OpenAssistant/oasst1"
PAGE_SIZE = 100  # the rows API's largest page


def fetch(url, timeout=60):
    """The body of ``url`` (the one place that touches the network; tests replace it)."""
    request = urllib.request.Request(url, headers={"User-Agent": "qlora-eval-download/1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except OSError as err:
        raise InputError(f"could not fetch {url}: {err}") from None


def convert_vicuna(raw):
    """Vicuna question rows (``text`` or llm_judge ``turns`` shape) -> questions format."""
    questions = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"Vicuna questions line {number}: invalid JSON ({err})") from None
        text = row["text"] if "text" in row else row["turns"][0]
        questions.append({"question_id": row["question_id"], "text": text, "category": row.get("category", "generic")})
    return questions


def fetch_oasst_messages(split="validation"):
    """Every message of an OASST1 split, via the datasets-server rows API, page by page."""
    messages, offset, total = [], 0, None
    while total is None or offset < total:
        query = urllib.parse.urlencode({"dataset": OASST_DATASET, "config": "default", "split": split,
                                        "offset": offset, "length": PAGE_SIZE})
        page = json.loads(fetch(f"{OASST_ROWS_URL}?{query}"))
        total = page["num_rows_total"]
        rows = [item["row"] for item in page["rows"]]
        if not rows:
            break
        messages.extend(rows)
        offset += len(rows)
    return messages


def _conversation(message, by_id):
    """The turns from the root down to ``message``, in Guanaco's "### Human/Assistant" format."""
    turns = []
    while message is not None:
        turns.append(f"{HUMAN if message['role'] == 'prompter' else ASSISTANT} {message['text']}")
        message = by_id.get(message.get("parent_id"))
    return " ".join(reversed(turns))


def convert_oasst(messages):
    """One benchmark query per user message that has a ranked reply: the conversation up to it
    (ending "### Assistant:") and its best-ranked reply."""
    by_id = {m["message_id"]: m for m in messages}
    best_reply = {}
    for message in messages:
        if message["role"] != "assistant" or message.get("rank") is None or message.get("deleted"):
            continue
        current = best_reply.get(message["parent_id"])
        if current is None or message["rank"] < current["rank"]:
            best_reply[message["parent_id"]] = message
    questions = []
    for message in messages:  # keep the dataset's order
        reply = best_reply.get(message["message_id"])
        if message["role"] != "prompter" or reply is None:
            continue
        text = f"{_conversation(message, by_id)} {ASSISTANT}"
        questions.append({"question_id": reply["message_id"], "text": text, "category": "generic",
                          "input": text, "output": reply["text"], "message_id": reply["message_id"],
                          "parent_id": message["message_id"], "rank": reply["rank"], "lang": reply.get("lang")})
    return questions


def write_questions(questions, path):
    write_jsonl_atomic(path, questions)
    print(f"wrote {len(questions)} questions to {path}", file=sys.stderr)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--only", choices=["vicuna", "oa"], help="fetch one benchmark only")
    parser.add_argument("--vicuna-url", default=VICUNA_URL)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cli.configure_logging()
    if args.only in (None, "vicuna"):
        write_questions(convert_vicuna(fetch(args.vicuna_url)), os.path.join(args.out_dir, "vicuna_questions.jsonl"))
    if args.only in (None, "oa"):
        write_questions(convert_oasst(fetch_oasst_messages()), os.path.join(args.out_dir, "oa_questions.jsonl"))
    return 0


def console_main():
    """The ``qlora-download-benchmarks`` command."""
    return run_main(main)
