"""Elo ratings from pairwise review files, as in the QLoRA paper's tables.

Assumes review files named <A>-vs-<B>-<judge>-reviewer[-threeclass].jsonl (or rows carrying
answer1_model / answer2_model, as eval_gpt_review.py writes), keyed by question_id or
message_id. Each verdict counts by its kind's outcome rule (judgekit.verdicts.KINDS: three-class,
or the higher of a score pair wins). Launch from any directory:

    python eval/elo.py reviews/*.jsonl --orderings 10000 --seed 0 --plot elo.png
    python eval/elo.py reviews/ --method bt --bootstrap 1000      # Bradley-Terry, order-free

--method elo (the paper's): start 1000, K 32, ties half, unparsable verdicts skipped and
counted; mean over random orderings with the 2.5-97.5 percentile interval. --method bt:
maximum-likelihood Bradley-Terry on the same scale, 95% bootstrap interval over judgments.
"""

import argparse
import dataclasses
import json
import sys
import time

from judgekit import bradley_terry, cli
from judgekit import elo as elo_core  # the core, not this command
from qlorakit.errors import run_main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="review files or directories of them")
    parser.add_argument("--method", choices=["elo", "bt"], default="elo",
                        help="elo: the paper's, averaged over random orderings; bt: Bradley-Terry "
                             "maximum likelihood (no order), same scale")
    parser.add_argument("--orderings", type=int, default=10_000, help="random orderings (elo; default 10000)")
    parser.add_argument("--bootstrap", type=int, default=bradley_terry.BOOTSTRAP_SAMPLES,
                        help="bootstrap resamples of the judgments (bt; default 1000)")
    parser.add_argument("--k", type=float, default=elo_core.K_FACTOR, help="K factor (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--plot", metavar="PNG", help="draw the ratings with their intervals")
    cli.add_naming_arguments(parser)
    args = parser.parse_args(argv)
    if args.orderings < 1:
        parser.error("--orderings must be at least 1")
    if args.bootstrap < 1:
        parser.error("--bootstrap must be at least 1")
    return args


def plot_ratings(ratings, path, label):
    """Points with their 95% intervals; ``ratings`` are (model, rating, low, high), best first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = ratings[::-1]  # best at the top
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(ordered) + 1.2))
    values = [value for _, value, _, _ in ordered]
    errors = [[value - low for _, value, low, _ in ordered], [high - value for _, value, _, high in ordered]]
    axes.errorbar(values, range(len(ordered)), xerr=errors, fmt="o", capsize=4)
    axes.set_yticks(range(len(ordered)), [model for model, _, _, _ in ordered])
    axes.axvline(elo_core.INITIAL_RATING, color="grey", linewidth=0.8, linestyle="--")
    axes.set_xlabel(label)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_elo(judgments, args):
    """The paper's Elo: ``(rows for JSON, table header, table rows, plot points, note)``."""
    from tqdm import tqdm

    with tqdm(total=args.orderings, desc="orderings", unit="ord", disable=args.json) as bar:
        ratings, skipped = elo_core.compute_elo(judgments, args.orderings, args.k, args.seed, progress=bar.update)
    rows = [[i, r.model, f"{r.elo:.0f}", f"{r.low:.0f}-{r.high:.0f}", f"±{r.margin:.1f}",
             f"{r.wins}/{r.losses}/{r.ties}"] for i, r in enumerate(ratings, 1)]
    return (ratings, ["rank", "model", "elo", "95% interval", "mean ±", "W/L/T"], rows,
            [(r.model, r.elo, r.low, r.high) for r in ratings], "Elo (mean over orderings, 95% interval)",
            f"{skipped} skipped (unparsable or self-play); {args.orderings} orderings")


def run_bradley_terry(judgments, args):
    """Bradley-Terry, same return shape as ``run_elo``."""
    ratings, skipped, dropped = bradley_terry.compute_bradley_terry(judgments, args.bootstrap, args.seed)
    rows = [[i, r.model, f"{r.rating:.0f}", f"{r.low:.0f}-{r.high:.0f}", f"{r.wins}/{r.losses}/{r.ties}"]
            for i, r in enumerate(ratings, 1)]
    return (ratings, ["rank", "model", "bt", "95% bootstrap", "W/L/T"], rows,
            [(r.model, r.rating, r.low, r.high) for r in ratings],
            "Bradley-Terry rating (Elo scale, 95% bootstrap interval)",
            f"{skipped} skipped (unparsable or self-play); {args.bootstrap} bootstrap resamples"
            + (f", {dropped} without a finite fit left out" if dropped else ""))


def main(argv=None):
    args = parse_args(argv)
    files, judgments = cli.load_review_judgments(args)
    started = time.perf_counter()
    ratings, header, rows, points, label, note = (run_elo if args.method == "elo" else run_bradley_terry)(judgments, args)
    print(f"{len(judgments)} judgments from {len(files)} files, {note}, {time.perf_counter() - started:.2f}s",
          file=sys.stderr)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in ratings], indent=2))
    else:
        print(cli.format_table(header, rows))
    if args.plot:
        plot_ratings(points, args.plot, label)
    return 0


def console_main():
    """The ``qlora-elo`` command."""
    return run_main(main)
