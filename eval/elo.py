"""Elo ratings from pairwise (three-class) review files, as in the QLoRA paper's tables.

Assumes review files named <A>-vs-<B>-<judge>-reviewer[-threeclass].jsonl (or rows carrying
answer1_model / answer2_model, as eval_gpt_review.py writes). Launch from any directory:

    python eval/elo.py reviews/*.jsonl --orderings 10000 --seed 0 --plot elo.png

Start 1000, K 32, ties half, unparsable verdicts skipped and counted; mean over random orderings
with the 2.5-97.5 percentile interval. 10,000 orderings of ~4,500 judgments take a few seconds.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from judgekit import cli  # noqa: E402
from judgekit import elo as elo_core  # noqa: E402  (the core, not this script)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="review files or directories of them")
    parser.add_argument("--orderings", type=int, default=10_000, help="random orderings (default 10000)")
    parser.add_argument("--k", type=float, default=elo_core.K_FACTOR, help="K factor (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--plot", metavar="PNG", help="draw the ratings with their intervals")
    cli.add_naming_arguments(parser)
    args = parser.parse_args(argv)
    if args.orderings < 1:
        parser.error("--orderings must be at least 1")
    return args


def plot_ratings(ratings, path):
    """Horizontal bars: mean rating with its 2.5-97.5 percentile interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = ratings[::-1]  # best at the top
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(ordered) + 1.2))
    means = [r.elo for r in ordered]
    errors = [[r.elo - r.low for r in ordered], [r.high - r.elo for r in ordered]]
    axes.errorbar(means, range(len(ordered)), xerr=errors, fmt="o", capsize=4)
    axes.set_yticks(range(len(ordered)), [r.model for r in ordered])
    axes.axvline(elo_core.INITIAL_RATING, color="grey", linewidth=0.8, linestyle="--")
    axes.set_xlabel("Elo (mean over orderings, 95% interval)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    files, judgments = cli.load_review_judgments(args)

    from tqdm import tqdm

    started = time.perf_counter()
    with tqdm(total=args.orderings, desc="orderings", unit="ord", disable=args.json) as bar:
        ratings, skipped = elo_core.compute_elo(judgments, args.orderings, args.k, args.seed, progress=bar.update)
    seconds = time.perf_counter() - started
    print(f"{len(judgments)} judgments from {len(files)} files, {skipped} unparsable skipped; "
          f"{args.orderings} orderings in {seconds:.2f}s", file=sys.stderr)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in ratings], indent=2))
    else:
        rows = [[i, r.model, f"{r.elo:.0f}", f"{r.low:.0f}-{r.high:.0f}", f"±{r.margin:.1f}",
                 f"{r.wins}/{r.losses}/{r.ties}"] for i, r in enumerate(ratings, 1)]
        print(cli.format_table(["rank", "model", "elo", "95% interval", "mean ±", "W/L/T"], rows))
    if args.plot:
        plot_ratings(ratings, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
