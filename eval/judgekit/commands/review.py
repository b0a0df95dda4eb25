"""Judge two answer files question by question with an OpenAI-compatible model (GPT-4 by default).

Assumes: a questions file, two answer files (any reference shape), OPENAI_API_KEY set
(OPENAI_BASE_URL for any other OpenAI-compatible server). The judge prompts and reviewers are
the package's own (pairwise three-class verdicts by default; --verdict picks another kind of
judgekit.verdicts.KINDS, e.g. 1-10 score pairs); -p/-r take other files, the reference's
included. Launch from any directory:

    qlora-judge -q questions.jsonl -a answers_a.jsonl answers_b.jsonl -o reviews/ -m gpt-4 --both-orders

Rows are appended as they arrive; rerunning the same command asks only what is missing or
failed. Cost: one request per question (two with --both-orders), ~1,000 prompt tokens each.
"""

import argparse
import functools
import logging
import os
import sys
import uuid

from judgekit import cli, client, naming, prompts, records, verdicts
from judgekit.errors import InputError
from qlorakit.errors import run_main
from qlorakit import run_lock
from qlorakit.jsonl import load_done_keys
from qlorakit.questions import load_questions

logger = logging.getLogger("eval_gpt_review")

# The reference script's long flags: abbreviations of these keep the meaning they had there.
REFERENCE_FLAGS = ("--question-file", "--answer-file-list", "--prompt-file", "--reviewer-file",
                   "--output-review-file", "--model", "--id-key", "--max-tokens")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--question-file", required=True)
    parser.add_argument("-a", "--answer-file-list", nargs="+", required=True, metavar="ANSWERS",
                        help="two answer files (further ones are ignored, as the reference did)")
    parser.add_argument("-p", "--prompt-file",
                        help="judge prompts (default: the packaged prompt of the --verdict kind, three-class "
                             "unless --verdict names another)")
    parser.add_argument("-r", "--reviewer-file", help="reviewers by question category (default: the packaged one)")
    parser.add_argument("-o", "--output-review-file", required=True,
                        help=f"output file, or an existing directory to name it {naming.review_filename_shape()}")
    parser.add_argument("-m", "--model", default="gpt-4", help="judge model (default gpt-4)")
    cli.add_id_key_argument(parser)
    parser.add_argument("--max-tokens", type=int, default=1024, help="judge reply length (default 1024)")
    parser.add_argument("--model-names", nargs=2, metavar=("A", "B"),
                        help="names of the two answer files' models (default: file stems, _ -> -)")
    parser.add_argument("--both-orders", action="store_true", help="judge each pair in both positions")
    parser.add_argument("--verdict", choices=["auto", *verdicts.KINDS], default="auto", help=verdict_help())
    parser.add_argument("-v", "--verbose", action="store_true", help="log every retry")
    client.add_request_arguments(parser)
    args = parser.parse_args(cli.expand_reference_abbreviations(argv, REFERENCE_FLAGS, parser))
    if len(args.answer_file_list) < 2:
        parser.error("-a/--answer-file-list needs two answer files")
    if len(args.answer_file_list) > 2:
        print(f"note: judging the first two answer files; ignoring {' '.join(args.answer_file_list[2:])}",
              file=sys.stderr)
        args.answer_file_list = args.answer_file_list[:2]
    return with_packaged_prompt_files(args)


def verdict_help():
    """--verdict's help, one clause per registered kind."""
    kinds = "; ".join(f"{kind.name}: {kind.description}" for kind in verdicts.KINDS.values())
    return (f"reply to ask for and parse ({kinds}); auto (default): the kind the -p file's name holds, else "
            f"{verdicts.UNNAMED_PROMPT_KIND}; without -p, {verdicts.DEFAULT_KIND}")


def with_packaged_prompt_files(args):
    """Settle ``args.verdict`` to a kind and fill in the packaged prompt and reviewer files the
    user did not name: without -p, the prompt is the kind's own (``verdicts.DEFAULT_KIND`` for
    auto); with it, auto is the kind its file name holds."""
    if args.verdict == "auto":
        named = args.prompt_file is not None
        args.verdict = verdicts.infer_verdict_kind(args.prompt_file) if named else verdicts.DEFAULT_KIND
    if args.prompt_file is None:
        args.prompt_file = prompts.packaged_prompt_file(args.verdict)
    if args.reviewer_file is None:
        args.reviewer_file = prompts.PACKAGED_REVIEWER_FILE
    return args


def review_key(row, id_keys):
    """What makes a judgment the same judgment: resume skips rows with a key already written.
    ``id_keys``: the id fields the questions carry (all of them are written to each row)."""
    return (*(str(row.get(key)) for key in id_keys), row.get("answer1_id"), row.get("answer2_id"),
            row.get("answer1_model"), row.get("answer2_model"), row.get("judge_model"),
            str(row.get("prompt_id")))


def other_answers_judged(done_keys, job_keys, id_count):
    """How many judgments already written (done_keys) are of other answers than the current ones
    (job_keys) to the same question, by the same two models and judge: answers regenerated since.
    Judging the new ones beside them would count each such question twice, old answers and new.
    Keys are review_key tuples: id_count ids, answer1_id, answer2_id, answer1_model, answer2_model,
    judge_model, prompt_id.

    >>> old = ("7", "a-old", "b1", "A", "B", "gpt-4", "1")
    >>> other_answers_judged({old}, [("7", "a-new", "b1", "A", "B", "gpt-4", "1")], 1)
    1
    >>> other_answers_judged({old}, [("8", "a-new", "b1", "A", "B", "gpt-4", "1")], 1)  # another question
    0
    """
    def question(key):
        return (*key[:id_count], *key[id_count + 2:id_count + 5])

    current = {question(key): key[id_count:id_count + 2] for key in job_keys}
    return sum(1 for key in done_keys
               if question(key) in current and current[question(key)] != key[id_count:id_count + 2])


def output_path(output_review_file, model_a, model_b, judge_model, verdict):
    """The review file: --output-review-file itself, or the reference's file name inside it when it
    names a folder."""
    if os.path.isdir(output_review_file) or output_review_file.endswith(("/", os.sep)):
        os.makedirs(output_review_file, exist_ok=True)
        return os.path.join(output_review_file, naming.review_filename(model_a, model_b, judge_model, verdict))
    return output_review_file


def build_jobs(questions, answers_a, answers_b, reviewers, prompt_table, judge_model, max_tokens, both_orders):
    """One ``ChatJob`` per (question, order); the payload is the row to write, minus the reply.

    ``answers_a`` / ``answers_b`` are ``(id_key, {id: Answer})``: each answer file is joined to a
    question by the question's value of that file's key. both_orders: also ask with the answers
    swapped (position bias).
    """
    (key_a, by_id_a), (key_b, by_id_b) = answers_a, answers_b
    jobs, missing = [], 0
    for question in questions:
        answer_a, answer_b = by_id_a.get(question.ids.get(key_a)), by_id_b.get(question.ids.get(key_b))
        if answer_a is None or answer_b is None:
            missing += 1
            continue
        reviewer = prompts.select_reviewer(reviewers, question.category)
        prompt = prompt_table[reviewer.prompt_id]
        orders = [(answer_a, answer_b), (answer_b, answer_a)] if both_orders else [(answer_a, answer_b)]
        for answer1, answer2 in orders:
            row = {
                **question.ids,
                "answer1_id": answer1.answer_id,
                "answer2_id": answer2.answer_id,
                "reviewer_id": reviewer.reviewer_id,
                "prompt_id": prompt.prompt_id,
                "answer1_model": answer1.model,
                "answer2_model": answer2.model,
                "judge_model": judge_model,
                "metadata": {},
            }
            messages = prompts.render_messages(prompt, question.text, answer1.text, answer2.text)
            jobs.append(client.ChatJob(messages, reviewer.temperature, max_tokens, payload=row))
    if missing:
        logger.warning("%d questions lack an answer in one of the answer files; skipped", missing)
    return jobs


def load_inputs(args):
    """Questions, both answer files as ``(id_key, answers)``, reviewers and prompts; logs the
    fields the files were joined on."""
    questions = load_questions(args.question_file, args.id_key, cli.ID_KEY_FLAG)
    names = args.model_names or [None, None]
    answers = [records.load_keyed_answers(path, name, args.id_key, cli.ID_KEY_FLAG) for path, name in zip(args.answer_file_list, names)]
    logger.info("joining answers to questions on %s", " and ".join(dict.fromkeys(key for key, _ in answers)))
    logger.info("prompts from %s, reviewers from %s", args.prompt_file, args.reviewer_file)
    prompt_table = prompts.load_prompts(args.prompt_file)
    reviewers = prompts.load_reviewers(args.reviewer_file)
    # Only the reviewers these questions use must have a prompt: the reference's OA command pairs
    # the one-prompt OA file with the three-reviewer Vicuna reviewer file.
    used = {reviewer.category: reviewer for reviewer in
            (prompts.select_reviewer(reviewers, question.category) for question in questions)}
    prompts.check_reviewers_have_prompts(used, prompt_table, args.reviewer_file, args.prompt_file)
    return questions, answers[0], answers[1], reviewers, prompt_table


def main(argv=None):
    args = parse_args(argv)
    cli.configure_logging(args.verbose)
    questions, answers_a, answers_b, reviewers, prompt_table = load_inputs(args)
    model_a = next(iter(answers_a[1].values())).model if answers_a[1] else "A"
    model_b = next(iter(answers_b[1].values())).model if answers_b[1] else "B"
    if model_a == model_b:
        raise InputError(f"both answer files are named {model_a!r}; pass --model-names A B")
    out = output_path(args.output_review_file, model_a, model_b, args.model, args.verdict)

    jobs = build_jobs(questions, answers_a, answers_b, reviewers, prompt_table, args.model, args.max_tokens,
                      args.both_orders)
    with run_lock.appending(out, "pass another --output-review-file"):  # two runs would both pay
        return judge_missing(args, out, jobs, tuple(questions[0].ids) if questions else ())


def judge_missing(args, out, jobs, id_keys):
    """Ask for the judgments of `jobs` that `out` does not hold yet and append them; the exit status."""
    key_of = functools.partial(review_key, id_keys=id_keys)
    done = load_done_keys(out, key_of)
    stale = other_answers_judged(done, [key_of(job.payload) for job in jobs], len(id_keys))
    if stale:
        raise InputError(f"{out} holds {stale} judgments of other answers to these questions by the same models "
                         "(regenerated since?): judge into another file, or remove it to judge the current answers")
    todo = [job for job in jobs if key_of(job.payload) not in done]
    logger.info("%s: %d judgments, %d already there, %d to ask %s", out, len(jobs),
                len(jobs) - len(todo), len(todo), args.model)
    if not todo:
        return 0

    unreadable = []
    kind = verdicts.get_kind(args.verdict)

    def make_row(job, text):
        score = kind.parse(text)
        if kind.outcome(score) is None:
            unreadable.append(score)
        return {"review_id": uuid.uuid4().hex[:22], **job.payload, "text": text, "score": score, "verdict": kind.name}

    status = client.run_jobs_to_file(client.runner_from_args(args, args.model), todo, out, make_row, "judging")
    if unreadable:
        # Paid for and kept: asking again costs as much and the scorers count these as unparsable.
        logger.warning("%d replies hold no readable %s verdict; written with score %s and not asked again",
                       len(unreadable), kind.name, unreadable[0])
    return status


def console_main():
    """The ``qlora-judge`` command."""
    return run_main(main)
