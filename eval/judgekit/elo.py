"""Elo ratings from pairwise judgments, averaged over random orderings. Pure and seeded.

QLoRA paper, section 5: every model starts at 1000, K = 32, and because Elo depends on the
order in which games are played, the rating is the mean over 10,000 random orderings. A tie
counts half a win for each side; an unparsable verdict is no game (skipped and counted).

The orderings are independent, so they are played side by side: one step of the loop plays the
t-th game of every ordering of a chunk at once, as numpy operations over the orderings axis.
Shuffling is the other half of the cost (one Fisher-Yates pass per ordering, which numpy runs
holding the GIL), so above a size threshold a helper process shuffles the next chunk while this
one plays. Either way the generator is consumed in the same order, so a seed always gives the
same orderings and the same ratings.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import numpy as np

from .verdicts import get_kind

INITIAL_RATING = 1000.0
K_FACTOR = 32.0
ORDERINGS_PER_CHUNK = 2000  # bounds memory: one chunk of OA orderings is 40,026 x 2000 bytes
SHUFFLES_PER_BLOCK = 64  # orderings shuffled before being written, transposed, into a chunk
STEPS_PER_BLOCK = 32  # steps whose rating positions are decoded together (a cache-sized block)
BACKGROUND_MIN_SHUFFLES = 20_000_000  # games x orderings above which a helper process pays off
OUTCOME_CLASSES = 3  # the first model's points x 2: 0 (loss), 1 (tie), 2 (win)


@dataclasses.dataclass
class Games:
    """Parsed games as index arrays; ``outcome`` is the first model's points (1, 0 or 0.5)."""

    models: list
    first: np.ndarray  # (G,) index into models
    second: np.ndarray  # (G,)
    outcome: np.ndarray  # (G,) float
    skipped: int = 0


@dataclasses.dataclass
class EloRating:
    model: str
    elo: float  # mean over orderings
    low: float  # 2.5th percentile over orderings
    high: float  # 97.5th percentile over orderings
    margin: float  # half-width of the 95% interval of the mean (1.96 sd / sqrt(R))
    wins: int
    losses: int
    ties: int


def outcome_of(judgment):
    """First model's points for a ``reviews.Judgment`` (1 win, 0.5 tie, 0 loss), or None when it
    is no game: the outcome rule of the judgment's verdict kind decides, never the score's type
    (three-class: 1, 2, 3; score pairs: the higher score wins; see ``verdicts.KINDS``)."""
    return get_kind(judgment.verdict).outcome(judgment.score)


def build_games(judgments):
    """``Games`` from ``reviews.Judgment`` rows; models sorted by name for stable output.

    A verdict that cannot be parsed, or a model judged against itself, is no game (counted in
    ``skipped``).
    """
    kept = [(j.model1, j.model2, outcome_of(j)) for j in judgments]
    kept = [game for game in kept if game[2] is not None and game[0] != game[1]]
    models = sorted({name for m1, m2, _ in kept for name in (m1, m2)})
    index = {name: i for i, name in enumerate(models)}
    return Games(
        models=models,
        first=np.array([index[m1] for m1, _, _ in kept], dtype=np.int64),
        second=np.array([index[m2] for _, m2, _ in kept], dtype=np.int64),
        outcome=np.array([points for _, _, points in kept], dtype=np.float64),
        skipped=len(judgments) - len(kept),
    )


def encode_games(games):
    """One small integer per game, (first * M + second) * 3 + 2 * points, and the tables that
    decode it: ``(codes, first_of, second_of, points_of)``.

    Orderings are stored as these codes (one byte each for up to 9 models), so a chunk of 2,000
    orderings of 40,026 games is 80 MB, and one lookup in a tiny table replaces three gathers.
    """
    num_models = len(games.models)
    classes = np.rint(games.outcome * 2).astype(np.int64)
    codes = (games.first * num_models + games.second) * OUTCOME_CLASSES + classes
    every_code = np.arange(num_models * num_models * OUTCOME_CLASSES)
    pair, points_class = np.divmod(every_code, OUTCOME_CLASSES)
    first_of, second_of = np.divmod(pair, num_models)
    codes = codes.astype(np.min_scalar_type(max(len(every_code) - 1, 0)))
    return codes, first_of, second_of, points_class / 2.0


def shuffle_orderings(codes, count, rng):
    """(G, count): column r holds the game codes of ordering r in the order they are played.

    Each ordering is one ``rng.shuffle`` of the games, one ordering after the other, which draws
    from the generator exactly as ``rng.permuted`` over the games axis of a (G, count) array
    does: a given seed keeps giving the same orderings.
    """
    ordered = np.empty((len(codes), count), dtype=codes.dtype)
    rows = np.empty((min(count, SHUFFLES_PER_BLOCK), len(codes)), dtype=np.intp)  # shuffle is fastest on intp
    for start in range(0, count, SHUFFLES_PER_BLOCK):
        block = rows[:min(SHUFFLES_PER_BLOCK, count - start)]
        block[:] = codes
        for row in block:
            rng.shuffle(row)
        ordered[:, start:start + len(block)] = block.T  # transposed a block at a time: no full-size copy
    return ordered


def play_orderings(games, ordered_codes, k=K_FACTOR, initial=INITIAL_RATING):
    """Final ratings after playing each ordering's games in its order.

    Args:
        games: ``Games``.
        ordered_codes: (G, R) codes (``encode_games``); column r is ordering r, e.g.
            ``codes[orders]`` for (G, R) game indices ``orders``.
    Returns:
        (R, M) ratings.
    """
    _, first_of, second_of, points_of = encode_games(games)
    num_games, num_orderings = ordered_codes.shape
    num_models = len(games.models)
    # One flat vector holds every ordering's ratings: ordering r, model m at r * M + m.
    ratings = np.full(num_orderings * num_models, initial, dtype=np.float64)
    offsets = np.arange(num_orderings) * num_models  # (R,)
    positions = np.empty((STEPS_PER_BLOCK, 2 * num_orderings), dtype=np.intp)  # [first | second]
    points = np.empty((STEPS_PER_BLOCK, num_orderings))
    change = np.empty(num_orderings)
    for start in range(0, num_games, STEPS_PER_BLOCK):
        block = ordered_codes[start:start + STEPS_PER_BLOCK]  # (B, R)
        steps = len(block)
        np.add(first_of.take(block), offsets, out=positions[:steps, :num_orderings])
        np.add(second_of.take(block), offsets, out=positions[:steps, num_orderings:])
        np.take(points_of, block, out=points[:steps])
        for position, first_points in zip(positions[:steps], points[:steps]):
            both = ratings.take(position)  # (2R,) the two sides' ratings; positions all distinct
            first, second = both[:num_orderings], both[num_orderings:]
            # change = k * (points - expected), expected = 1 / (1 + 10 ** ((second - first) / 400)),
            # evaluated in place, operation by operation, so every ordering's numbers are exact.
            np.subtract(second, first, out=change)
            np.divide(change, 400.0, out=change)
            np.power(10.0, change, out=change)
            np.add(1.0, change, out=change)
            np.divide(1.0, change, out=change)
            np.subtract(first_points, change, out=change)
            np.multiply(k, change, out=change)
            np.add(first, change, out=first)
            np.subtract(second, change, out=second)
            ratings[position] = both
    return ratings.reshape(num_orderings, num_models)


def serve_shuffles(source=None, sink=None):
    """Helper-process side of ``ordering_chunks``: read a JSON header line (generator state,
    chunk sizes, code dtype) and the game codes from stdin, write each chunk's (G, n) codes to
    stdout. Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    source, sink = source or sys.stdin.buffer, sink or sys.stdout.buffer
    header = json.loads(source.readline())
    codes = np.frombuffer(source.read(), dtype=header["dtype"])
    rng = np.random.default_rng()
    rng.bit_generator.state = header["state"]
    for count in header["sizes"]:
        sink.write(shuffle_orderings(codes, count, rng).tobytes())
        sink.flush()


def _start_helper(codes, sizes, rng):
    """A Python process running ``serve_shuffles``, already sent its work."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    helper = subprocess.Popen([sys.executable, "-c", "from judgekit.elo import serve_shuffles; serve_shuffles()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    header = {"state": rng.bit_generator.state, "sizes": sizes, "dtype": codes.dtype.str}
    helper.stdin.write(json.dumps(header).encode() + b"\n" + codes.tobytes())
    helper.stdin.close()
    return helper


def ordering_chunks(codes, sizes, rng, background):
    """Yield one (G, n) array of shuffled orderings per chunk size, in order.

    With ``background`` a helper process, given ``rng``'s state, shuffles ahead (as far as the
    pipe lets it: about a chunk) while the caller plays. It draws the same numbers in the same
    order, so the orderings are the same; ``rng`` itself is left where it was.
    """
    if not background:
        for count in sizes:
            yield shuffle_orderings(codes, count, rng)
        return
    helper = _start_helper(codes, sizes, rng)
    try:
        for count in sizes:
            chunk = np.empty((len(codes), count), dtype=codes.dtype)
            if helper.stdout.readinto(chunk.reshape(-1)) != chunk.nbytes:
                helper.wait()
                raise RuntimeError(f"the shuffling helper stopped: {helper.stderr.read().decode().strip()}")
            yield chunk
    finally:
        helper.kill()
        helper.wait()
        helper.stdout.close()
        helper.stderr.close()


def spare_core():
    """Whether a helper process would likely get a core of its own: at least two cores and a
    load average below their number minus one. (On a saturated machine it only competes.)"""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        return cores > 1 and os.getloadavg()[0] < cores - 1
    except OSError:  # no load average on this platform
        return cores > 1


def compute_elo(judgments, orderings=10_000, k=K_FACTOR, seed=0, initial=INITIAL_RATING, progress=None,
                background=None):
    """Elo ratings, best first, and the number of skipped judgments (see ``build_games``).

    ``progress`` (optional) is called with the number of orderings finished after each chunk.
    ``background`` shuffles in a helper process (default: when the work is large enough to
    repay its start-up and a core looks free, ``spare_core``); the numbers are the same either
    way.
    """
    games = build_games(judgments)
    if not games.models:
        return [], games.skipped
    codes = encode_games(games)[0]
    if background is None:
        background = len(codes) * orderings >= BACKGROUND_MIN_SHUFFLES and spare_core()
    sizes = [min(ORDERINGS_PER_CHUNK, orderings - start) for start in range(0, orderings, ORDERINGS_PER_CHUNK)]
    finals = []
    for chunk in ordering_chunks(codes, sizes, np.random.default_rng(seed), background):
        finals.append(play_orderings(games, chunk, k, initial))
        if progress:
            progress(chunk.shape[1])
    return summarize(games, np.concatenate(finals)), games.skipped


def record_of(games, model_index):
    """``(wins, losses, ties)`` of one model over all its games."""
    as_first, as_second = games.first == model_index, games.second == model_index
    points = np.concatenate([games.outcome[as_first], 1.0 - games.outcome[as_second]])
    return int((points == 1.0).sum()), int((points == 0.0).sum()), int((points == 0.5).sum())


def summarize(games, finals):
    """``EloRating`` per model from the (R, M) final ratings, best first."""
    means = finals.mean(axis=0)
    margins = 1.96 * finals.std(axis=0) / np.sqrt(len(finals))
    lows, highs = np.percentile(finals, [2.5, 97.5], axis=0)
    ratings = [EloRating(model, float(means[i]), float(lows[i]), float(highs[i]), float(margins[i]),
                         *record_of(games, i))
               for i, model in enumerate(games.models)]
    return sorted(ratings, key=lambda rating: -rating.elo)
