"""The paper's Elo and Bradley-Terry side by side, as a Markdown table per benchmark.

Assumes three-class review files (the released ratings-gpt4/<benchmark>/ folders, or
eval_gpt_review.py's output). Launch from any directory:

    python eval/benchmarks/rating_methods.py vicuna=ratings-gpt4/vicuna/pairwise oa=ratings-gpt4/oa

Elo: mean over --orderings random orderings (K 32), with the 2.5-97.5 percentile interval over
orderings. Bradley-Terry: maximum likelihood, with the 95% interval over --bootstrap resamples of
the judgments. Same seed for both.
"""

import argparse
import sys

from judgekit import bradley_terry, cli, elo
from judgekit.errors import InputError
from judgekit.reviews import load_judgments
from qlorakit.errors import run_main


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def compare(judgments, orderings, bootstrap, seed):
    """Table rows, best Elo first: model, Elo, its interval, BT, its interval, W/L/T."""
    elo_ratings, skipped = elo.compute_elo(judgments, orderings, seed=seed)
    bt_ratings = {r.model: r for r in bradley_terry.compute_bradley_terry(judgments, bootstrap, seed)[0]}
    rows = []
    for rating in elo_ratings:
        fit = bt_ratings[rating.model]
        rows.append([rating.model, f"{rating.elo:.0f}", f"{rating.low:.0f}-{rating.high:.0f}", f"{fit.rating:.0f}",
                     f"{fit.low:.0f}-{fit.high:.0f}", f"{rating.wins}/{rating.losses}/{rating.ties}"])
    return rows, skipped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmarks", nargs="+", metavar="NAME=PATH", help="a benchmark's review files or folder")
    parser.add_argument("--orderings", type=int, default=10_000)
    parser.add_argument("--bootstrap", type=int, default=bradley_terry.BOOTSTRAP_SAMPLES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge", default="gpt-4", help="judge name in the review file names")
    args = parser.parse_args(argv)
    cli.configure_logging()
    for spec in args.benchmarks:
        name, sep, path = spec.partition("=")
        if not sep:
            raise InputError(f"expected NAME=PATH, got {spec!r}")
        files = cli.expand_review_paths([path])
        judgments = load_judgments(files, judge=args.judge)
        rows, skipped = compare(judgments, args.orderings, args.bootstrap, args.seed)
        print(f"\n{name}: {len(judgments)} judgments in {len(files)} files, {skipped} skipped (unparsable)\n")
        print(markdown_table(["model", "Elo (paper's method)", "2.5-97.5% over orderings", "Bradley-Terry",
                              "95% bootstrap", "W/L/T"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
