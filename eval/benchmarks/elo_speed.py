"""Elo over random orderings: the previous implementation against judgekit.elo, side by side.

Assumes review files (or directories of them); with --synthetic-oa, also a made-up set of the
OpenAssistant benchmark's shape (7 systems, every ordered pair, 953 queries: 40,026 judgments).
Launch from any directory:

    python eval/benchmarks/elo_speed.py REVIEW_DIR --synthetic-oa --orderings 10000 --repeats 3

Each repeat times the previous implementation and the current one back to back, on the same
judgments and seed: the current one both in this process alone and with its shuffling helper
process, whatever the machine's load would choose. It checks that all give the same final
ratings; the median of the repeats is reported.
Wall time depends on what else the machine runs; CPU time (this process and its helper process
together) much less so, and is reported beside it.
"""

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np

from judgekit import cli, elo
from judgekit.reviews import Judgment, load_judgments
from qlorakit.errors import run_main

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


def cpu_seconds():
    """User + system CPU time of this process and its finished child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function, *args):
    """``(result, wall seconds, CPU seconds)``."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = function(*args)
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def time_all(judgments, orderings, seed):
    """``[(wall, cpu)]`` seconds of the previous implementation, the current one in-process, and
    the current one with its helper; and whether all three give the same mean ratings."""
    previous, *previous_times = timed(previous_final_ratings, judgments, orderings, seed)
    means = [previous.mean(axis=0)]
    times = [tuple(previous_times)]
    models = elo.build_games(judgments).models
    for background in (False, True):
        (ratings, _), *current_times = timed(elo.compute_elo, judgments, orderings, elo.K_FACTOR, seed,
                                             elo.INITIAL_RATING, None, background)
        means.append([next(r.elo for r in ratings if r.model == m) for m in models])
        times.append(tuple(current_times))
    return times, all(np.array_equal(means[0], other) for other in means[1:])


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
        runs = [time_all(judgments, args.orderings, args.seed) for _ in range(args.repeats)]
        wall = [statistics.median(times[i][0] for times, _ in runs) for i in range(3)]
        cpu = [statistics.median(times[i][1] for times, _ in runs) for i in range(3)]
        rows.append([os.path.basename(name.rstrip("/")) or name, len(judgments),
                     " / ".join(" ".join(f"{t[0]:.1f}" for t in times) for times, _ in runs),
                     *(f"{w:.1f} ({c:.1f})" for w, c in zip(wall, cpu)), f"{wall[0] / min(wall[1:]):.1f}x",
                     "yes" if all(same for _, same in runs) else "NO"])
    print(f"{args.orderings} orderings, seed {args.seed}, median of {args.repeats} runs; "
          f"wall seconds (CPU seconds, helper included)")
    print(cli.format_table(["judgments from", "n", "wall per run: previous in-process helper", "previous",
                            "current in-process", "current + helper", "speed-up", "same ratings"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
