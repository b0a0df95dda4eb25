"""Bradley-Terry ratings by maximum likelihood, on the Elo scale. Pure and seeded.

Elo (``elo``) updates ratings game by game, so the result depends on the order of the games;
the QLoRA paper averages over 10,000 random orderings for that reason. Bradley-Terry fits one
strength per model to all judgments at once, P(i beats j) = p_i / (p_i + p_j), which has no
order at all (the model large public chatbot leaderboards moved to).

- Ties count as half a win for each side (the same rule as our Elo), so the likelihood is
  sum over pairs of w_ij log(p_i / (p_i + p_j)) with half-wins in w_ij.
- The maximum is found by Zermelo's iteration (the MM algorithm of Hunter, 2004,
  doi:10.1214/aos/1079120141): p_i <- W_i / sum_j n_ij / (p_i + p_j), W_i being i's points
  and n_ij the games between i and j. It exists and is unique when every split of the models
  into two groups has each group scoring points against the other; otherwise one group's
  strengths run off to infinity.
- Elo scale: rating_i = 1000 + 400 log10(p_i), with the strengths' geometric mean fixed at 1,
  so the ratings average 1000 as Elo ratings do and 400 points is a factor of 10 in odds.
- 95% intervals: percentiles over bootstrap resamples of the judgments (drawn with
  replacement, seeded). A resample of N judgments is a multinomial draw of counts over the
  distinct (first, second, verdict) cells, which is how it is drawn here.
"""

import dataclasses

import numpy as np

from .elo import INITIAL_RATING, build_games, record_of
from .errors import InputError

BOOTSTRAP_SAMPLES = 1000
TOLERANCE = 1e-10  # largest change of any log10 strength between iterations at convergence
MAX_ITERATIONS = 100_000


@dataclasses.dataclass
class BradleyTerryRating:
    model: str
    rating: float  # maximum-likelihood rating on the Elo scale
    low: float  # 2.5th percentile over bootstrap resamples of the judgments
    high: float  # 97.5th percentile
    wins: int
    losses: int
    ties: int


def distinct_games(games):
    """``(first, second, outcome, counts)`` of the distinct (first, second, verdict) games."""
    cells, counts = np.unique(np.stack([games.first, games.second, games.outcome]), axis=1, return_counts=True)
    return cells[0].astype(np.int64), cells[1].astype(np.int64), cells[2], counts


def points_matrix(first, second, outcome, counts, num_models):
    """(..., M, M): entry [i, j] is the points i scored against j (a tie is half a point), when
    game k is played ``counts[..., k]`` times."""
    per_game = np.zeros((len(outcome), num_models * num_models))
    np.add.at(per_game, (np.arange(len(outcome)), first * num_models + second), outcome)
    np.add.at(per_game, (np.arange(len(outcome)), second * num_models + first), 1.0 - outcome)
    return (counts @ per_game).reshape(*np.shape(counts)[:-1], num_models, num_models)


def likelihood_has_maximum(points):
    """(...,) bool: every model can reach every other through "scored a point against" links,
    the condition for a finite maximum-likelihood fit."""
    num_models = points.shape[-1]
    reach = ((points > 0) | np.eye(num_models, dtype=bool)).astype(np.int64)
    for _ in range(max(1, int(np.ceil(np.log2(num_models))))):
        reach = ((reach @ reach) > 0).astype(np.int64)
    return reach.all(axis=(-2, -1))


def fit_ratings(points):
    """Maximum-likelihood Elo-scale ratings (..., M) for points matrices (..., M, M) that have a
    maximum (``likelihood_has_maximum``)."""
    games = points + np.swapaxes(points, -1, -2)  # n_ij
    scored = points.sum(axis=-1)  # W_i
    log_strength = np.zeros(points.shape[:-1])
    for _ in range(MAX_ITERATIONS):
        strength = 10.0 ** log_strength
        denominator = (games / (strength[..., :, None] + strength[..., None, :])).sum(axis=-1)
        updated = np.log10(scored / denominator)
        updated -= updated.mean(axis=-1, keepdims=True)  # geometric mean of strengths 1
        converged = np.max(np.abs(updated - log_strength)) < TOLERANCE
        log_strength = updated
        if converged:
            break
    return INITIAL_RATING + 400.0 * log_strength


def bootstrap_ratings(games, samples, rng):
    """(kept samples, M) ratings of judgment resamples, and how many resamples had no maximum."""
    first, second, outcome, counts = distinct_games(games)
    draws = rng.multinomial(counts.sum(), counts / counts.sum(), size=samples)  # (B, distinct games)
    points = points_matrix(first, second, outcome, draws, len(games.models))
    usable = likelihood_has_maximum(points)
    return fit_ratings(points[usable]), int((~usable).sum())


def compute_bradley_terry(judgments, bootstrap=BOOTSTRAP_SAMPLES, seed=0):
    """``(ratings best first, skipped judgments, bootstrap resamples without a maximum)``.

    Raises InputError when the judgments themselves have no maximum-likelihood fit.
    """
    games = build_games(judgments)
    if not games.models:
        return [], games.skipped, 0
    first, second, outcome, counts = distinct_games(games)
    points = points_matrix(first, second, outcome, counts, len(games.models))
    if not likelihood_has_maximum(points):
        raise InputError("no Bradley-Terry fit: some group of models scored no point (win or tie) against "
                         "the others, so their ratings are unbounded")
    ratings = fit_ratings(points)
    resampled, dropped = bootstrap_ratings(games, bootstrap, np.random.default_rng(seed))
    if len(resampled):
        lows, highs = np.percentile(resampled, [2.5, 97.5], axis=0)
    else:
        lows = highs = np.full(len(games.models), np.nan)
    rows = [BradleyTerryRating(model, float(ratings[i]), float(lows[i]), float(highs[i]), *record_of(games, i))
            for i, model in enumerate(games.models)]
    return sorted(rows, key=lambda row: -row.rating), games.skipped, dropped
