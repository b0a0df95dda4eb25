"""Scores relative to a reference system from 10-point score-pair review files (paper's table).

Assumes review files whose rows have score [s1, s2], named <A>-vs-<B>-<judge>-reviewer.jsonl
(or carrying answer1_model / answer2_model), keyed by question_id or message_id. Launch from any
directory, e.g. on the public QLoRA repository's eval/ folder:

    python eval/relative_score.py $QLORA_EVAL/ratings-gpt4/vicuna/relative-gpt-3.5 \
        --reference gpt-3.5 --judge gpt4 \
        --answers gpt-3.5=$QLORA_EVAL/generations/vicuna/answer_gpt35.jsonl

Score = 100 * system total / reference total over both presentation orders; also per order, and
a 95% bootstrap interval over questions (seeded).
"""

import argparse
import dataclasses
import json
import math
import sys

from judgekit import cli, relative
from judgekit.errors import InputError
from qlorakit.errors import run_main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="review files or directories of them")
    parser.add_argument("--reference", required=True, help="name of the reference system, e.g. gpt-3.5")
    parser.add_argument("--bootstrap", type=int, default=relative.BOOTSTRAP_SAMPLES, help="bootstrap samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    cli.add_naming_arguments(parser)
    return parser.parse_args(argv)


def _percent(value):
    return "-" if math.isnan(value) else f"{value:.1f}%"


def main(argv=None):
    args = parse_args(argv)
    files, judgments = cli.load_review_judgments(args)
    others = relative.other_kinds(judgments)
    described = ", ".join(f"{count} {kind}" for kind, count in sorted(others.items()))
    if len(judgments) == sum(others.values()):
        raise InputError(f"no 10-point score pairs in these files ({described} verdicts): relative scores need reviews "
                         "written with --verdict scores; qlora-elo rates the other kinds")
    scores = relative.compute_relative_scores(judgments, args.reference, args.bootstrap, args.seed)
    if not scores:
        raise InputError(f"no judgment has {args.reference!r} as one of its two models")
    unparsable = sum(s.unparsable for s in scores)
    skipped = f", {described} verdicts of another kind skipped" if others else ""
    print(f"{len(judgments)} judgments from {len(files)} files, {unparsable} unparsable skipped{skipped}",
          file=sys.stderr)
    if args.json:
        print(json.dumps([dataclasses.asdict(s) for s in scores], indent=2))
        return 0
    rows = [[s.model, _percent(s.score), _percent(s.score_first), _percent(s.score_second),
             f"{_percent(s.low)}-{_percent(s.high)}", s.judgments, s.unparsable] for s in scores]
    header = ["model", f"vs {args.reference}", "shown 1st", "shown 2nd", "95% bootstrap", "n", "unparsable"]
    print(cli.format_table(header, rows))
    return 0


def console_main():
    """The ``qlora-relative-score`` command."""
    return run_main(main)
