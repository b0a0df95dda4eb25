"""Answer a questions file with an OpenAI-compatible model (the ChatGPT / GPT-4 baselines).

Assumes OPENAI_API_KEY (and OPENAI_BASE_URL for a server other than OpenAI's). Launch:

    python eval/qa_baseline_gpt.py -q questions.jsonl -o answers/answer_gpt35.jsonl -m gpt-3.5-turbo

Writes the reference's answer format (answer_id, question_id, model_id, text, metadata; OA rows
also carry message_id, as the questions do), one row as each reply arrives; a rerun answers only
the questions still missing.
"""

import argparse
import functools
import logging
import uuid

from judgekit import cli, client
from qlorakit import run_lock
from qlorakit.errors import run_main
from qlorakit.jsonl import appended_file, load_done_keys
from qlorakit.questions import load_questions

logger = logging.getLogger("qa_baseline_gpt")

# The reference script's long flags: abbreviations of these keep the meaning they had there.
REFERENCE_FLAGS = ("--question", "--output", "--max-tokens")

# Our own wording; the answer should read like any assistant's, with no judge-specific framing.
SYSTEM_PROMPT = "You are an assistant. Answer the user's request clearly, correctly and in useful detail."


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--question", "--question-file", dest="question", required=True)
    parser.add_argument("-o", "--output", required=True, type=appended_file, help="answers file (JSONL, appended)")
    parser.add_argument("-m", "--model", default="gpt-3.5-turbo")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("-v", "--verbose", action="store_true")
    cli.add_id_key_argument(parser)
    client.add_request_arguments(parser)
    return parser.parse_args(cli.expand_reference_abbreviations(argv, REFERENCE_FLAGS, parser))


def answer_key(row, id_keys):
    """Resume key: the question's ids (every id field the questions carry) and the model."""
    return (*(str(row.get(key)) for key in id_keys), row.get("model_id"))


def main(argv=None):
    args = parse_args(argv)
    cli.configure_logging(args.verbose)
    questions = load_questions(args.question, args.id_key, cli.ID_KEY_FLAG)
    with run_lock.appending(args.output, "pass another --output"):  # two runs would both pay
        return answer_missing(args, questions)


def answer_missing(args, questions):
    """Ask for the answers `args.output` does not hold yet and append them; the exit status."""
    key_of = functools.partial(answer_key, id_keys=tuple(questions[0].ids) if questions else ())
    done = load_done_keys(args.output, key_of)
    payloads = [{**q.ids, "model_id": args.model} for q in questions]  # rows keyed like the questions
    jobs = [
        client.ChatJob(
            messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q.text}],
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            payload=payload,
        )
        for q, payload in zip(questions, payloads)
        if key_of(payload) not in done
    ]
    logger.info("%s: %d questions, %d to ask %s", args.output, len(questions), len(jobs), args.model)
    if not jobs:
        return 0

    def make_row(job, text):
        return {"answer_id": uuid.uuid4().hex[:22], **job.payload, "text": text, "metadata": {}}

    return client.run_jobs_to_file(client.runner_from_args(args, args.model), jobs, args.output, make_row,
                                   "answering")


def console_main():
    """The ``qlora-qa-baseline`` command."""
    return run_main(main)
