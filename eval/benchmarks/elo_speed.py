"""Elo over random orderings: the previous implementation against judgekit.elo, side by side.

Assumes review files (or directories of them); with --synthetic-oa, also a made-up set of the
OpenAssistant benchmark's shape (7 systems, every ordered pair, 953 queries: 40,026 judgments).
Launch from any directory:

    python eval/benchmarks/elo_speed.py REVIEW_DIR --synthetic-oa --orderings 10000 --repeats 3

Each repeat times the previous implementation and the current one back to back, on the same
judgments and seed, and checks that they give the same final ratings; the median is reported.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from judgekit import cli, elo  # noqa: E402
from judgekit.reviews import Judgment, load_judgments  # noqa: E402

OA_SYSTEMS = 7
OA_QUERIES = 953
PREVIOUS_CHUNK = 2000


def previous_play_orderings(games, orders, k=elo.K_FACTOR, initial=elo.INITIAL_RATING):
    """The implementation this benchmark compares against: one numpy step per game, orderings
    side by side, (G, R) game indices. Also the tests' reference for "same numbers"."""
    num_games, num_orderings = orders.shape
    num_models = len(games.models)
    ratings = np.full(num_orderings * num_models, initial, dtype=np.float64)
    offsets = np.arange(num_orderings) * num_models
    for step in range(num_games):
        game = orders[step]
        first = offsets + games.first[game]
        second = offsets + games.second[game]
        rating_first, rating_second = ratings[first], ratings[second]
        expected = 1.0 / (1.0 + 10.0 ** ((rating_second - rating_first) / 400.0))
        delta = k * (games.outcome[game] - expected)
        ratings[first] = rating_first + delta
        ratings[second] = rating_second - delta
    return ratings.reshape(num_orderings, num_models)


def previous_final_ratings(judgments, orderings, seed=0):
    """(R, M) final ratings as the previous implementation computed them (chunks of 2,000
    orderings, each a ``permuted`` (G, chunk) array)."""
    games = elo.build_games(judgments)
    rng = np.random.default_rng(seed)
    finals = []
    for start in range(0, orderings, PREVIOUS_CHUNK):
        count = min(PREVIOUS_CHUNK, orderings - start)
        base = np.broadcast_to(np.arange(len(games.outcome), dtype=np.int32)[:, None], (len(games.outcome), count))
        finals.append(previous_play_orderings(games, rng.permuted(base, axis=0)))
    return np.concatenate(finals)


def synthetic_oa_judgments(seed=0):
    """Three-class verdicts of OA's shape: every ordered pair of 7 systems on 953 queries."""
    rng = np.random.default_rng(seed)
    systems = [f"system-{i}" for i in range(OA_SYSTEMS)]
    strength = np.linspace(-1.0, 1.0, OA_SYSTEMS)
    judgments = []
    for a in range(OA_SYSTEMS):
        for b in range(OA_SYSTEMS):
            if a == b:
                continue
            first_wins = 1 / (1 + np.exp(strength[b] - strength[a]))
            verdicts = rng.choice([1, 2, 3], size=OA_QUERIES, p=[0.8 * first_wins, 0.8 * (1 - first_wins), 0.2])
            judgments.extend(Judgment(f"q{q}", systems[a], systems[b], int(v)) for q, v in enumerate(verdicts))
    return judgments


def time_both(judgments, orderings, seed):
    """Seconds of the previous and the current implementation, and whether their ratings agree."""
    started = time.perf_counter()
    previous = previous_final_ratings(judgments, orderings, seed).mean(axis=0)
    previous_seconds = time.perf_counter() - started
    started = time.perf_counter()
    current, _ = elo.compute_elo(judgments, orderings, seed=seed)
    current_seconds = time.perf_counter() - started
    models = elo.build_games(judgments).models
    same = np.array_equal(previous, [next(r.elo for r in current if r.model == m) for m in models])
    return previous_seconds, current_seconds, same


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="review files or directories of them")
    parser.add_argument("--synthetic-oa", action="store_true", help="also time a synthetic OA-shaped set")
    parser.add_argument("--orderings", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge", default="gpt-4", help="judge name in the review file names")
    args = parser.parse_args(argv)
    sets = [(path, load_judgments(cli.expand_review_paths([path]), judge=args.judge)) for path in args.files]
    if args.synthetic_oa:
        sets.append(("synthetic OA shape", synthetic_oa_judgments(args.seed)))
    rows = []
    for name, judgments in sets:
        runs = [time_both(judgments, args.orderings, args.seed) for _ in range(args.repeats)]
        previous, current = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        rows.append([os.path.basename(name.rstrip("/")) or name, len(judgments),
                     " ".join(f"{r[0]:.1f}" for r in runs), " ".join(f"{r[1]:.1f}" for r in runs),
                     f"{previous:.1f}", f"{current:.1f}", f"{previous / current:.1f}x",
                     "yes" if all(r[2] for r in runs) else "NO"])
    print(cli.format_table(["judgments from", "n", "previous s (runs)", "current s (runs)", "previous median",
                            "current median", "speed-up", "same ratings"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
