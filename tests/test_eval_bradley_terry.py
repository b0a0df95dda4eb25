"""judgekit.bradley_terry: the fit against closed forms and an independent maximisation of the
likelihood, its bootstrap, and eval/elo.py --method bt."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EVAL_DIR = Path(__file__).resolve().parent.parent / "eval"

from judgekit import bradley_terry as bt
from judgekit.errors import InputError
from judgekit.reviews import Judgment

PAIRWISE = EVAL_DIR.parent.parent / "shared" / "reference" / "qlora-eval" / "ratings-gpt4" / "vicuna" / "pairwise"

# A hand-made tournament: (first, second, verdict) with 1 = first better, 2 = second, 3 = tie.
TOURNAMENT = [("A", "B", 1)] * 5 + [("B", "A", 1)] * 2 + [("A", "B", 3)] * 2 + [("B", "C", 1)] * 4 \
    + [("C", "B", 1)] * 3 + [("C", "A", 1)] * 1 + [("A", "C", 1)] * 4 + [("C", "A", 3)] * 1


def judgments_of(games):
    return [Judgment(q, a, b, v) for q, (a, b, v) in enumerate(games)]


def log_likelihood(ratings, games):
    """Sum over judgments of log P(observed verdict) on the Elo scale; a tie is half a win and
    half a loss."""
    total = 0.0
    for first, second, verdict in games:
        p_first = 1.0 / (1.0 + 10 ** ((ratings[second] - ratings[first]) / 400.0))
        points = {1: 1.0, 2: 0.0, 3: 0.5}[verdict]
        total += points * math.log(p_first) + (1 - points) * math.log(1 - p_first)
    return total


def maximise_by_coordinates(games, models, sweeps=60):
    """Independent fit: golden-section search on one rating at a time (the log-likelihood is
    concave in each), then shifted to average 1000."""
    ratings = {m: 1000.0 for m in models}
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(sweeps):
        for model in models:
            low, high = ratings[model] - 800, ratings[model] + 800

            def value(x):
                return log_likelihood({**ratings, model: x}, games)

            for _ in range(80):
                a, b = high - golden * (high - low), low + golden * (high - low)
                low, high = (low, b) if value(a) > value(b) else (a, high)
            ratings[model] = (low + high) / 2
    shift = 1000 - sum(ratings.values()) / len(ratings)
    return {m: r + shift for m, r in ratings.items()}


class TestFit:
    def test_two_models_closed_form(self):
        # 3 wins to 1: odds 3, so the gap is 400 log10(3) and the two ratings average 1000.
        ratings, skipped, _ = bt.compute_bradley_terry(judgments_of([("A", "B", 1)] * 3 + [("A", "B", 2)]), 10)
        assert skipped == 0
        assert {r.model: r.rating for r in ratings} == pytest.approx(
            {"A": 1000 + 200 * math.log10(3), "B": 1000 - 200 * math.log10(3)}, abs=1e-6)

    def test_ties_are_half_a_win(self):
        # 1 win, 1 loss and 2 ties between A and B: even.
        games = [("A", "B", 1), ("A", "B", 2), ("A", "B", 3), ("B", "A", 3)]
        ratings, _, _ = bt.compute_bradley_terry(judgments_of(games), 10)
        assert [r.rating for r in ratings] == pytest.approx([1000, 1000], abs=1e-6)
        assert {(r.wins, r.losses, r.ties) for r in ratings} == {(1, 1, 2)}

    def test_hand_made_tournament_matches_an_independent_maximisation(self):
        fitted = {r.model: r.rating for r in bt.compute_bradley_terry(judgments_of(TOURNAMENT), 10)[0]}
        independent = maximise_by_coordinates(TOURNAMENT, ["A", "B", "C"])
        assert fitted == pytest.approx(independent, abs=0.01)
        assert log_likelihood(fitted, TOURNAMENT) >= log_likelihood(independent, TOURNAMENT) - 1e-9

    def test_expected_points_equal_scored_points_at_the_fit(self):
        # The likelihood's stationarity condition, for every model.
        fitted = {r.model: r.rating for r in bt.compute_bradley_terry(judgments_of(TOURNAMENT), 10)[0]}
        for model in fitted:
            scored = expected = 0.0
            for first, second, verdict in TOURNAMENT:
                if model not in (first, second):
                    continue
                points = {1: 1.0, 2: 0.0, 3: 0.5}[verdict]
                other = second if model == first else first
                scored += points if model == first else 1 - points
                expected += 1 / (1 + 10 ** ((fitted[other] - fitted[model]) / 400))
            assert expected == pytest.approx(scored, abs=1e-6)

    def test_order_of_the_judgments_does_not_matter(self):
        shuffled = [TOURNAMENT[i] for i in np.random.default_rng(0).permutation(len(TOURNAMENT))]
        first = bt.compute_bradley_terry(judgments_of(TOURNAMENT), 100, seed=1)[0]
        second = bt.compute_bradley_terry(judgments_of(shuffled), 100, seed=1)[0]
        assert [(r.model, round(r.rating, 9)) for r in first] == [(r.model, round(r.rating, 9)) for r in second]

    def test_unbeaten_model_has_no_fit(self):
        with pytest.raises(InputError, match="no Bradley-Terry fit"):
            bt.compute_bradley_terry(judgments_of([("A", "B", 1), ("A", "C", 1), ("B", "C", 3)]))


class TestBootstrap:
    def test_seeded_and_around_the_estimate(self):
        judgments = judgments_of(TOURNAMENT * 5)
        first, _, dropped = bt.compute_bradley_terry(judgments, 300, seed=4)
        again = bt.compute_bradley_terry(judgments, 300, seed=4)[0]
        other = bt.compute_bradley_terry(judgments, 300, seed=5)[0]
        assert first == again and first != other
        assert dropped == 0
        assert all(r.low < r.rating < r.high for r in first)

    def test_resamples_without_a_fit_are_left_out_and_counted(self):
        # One B win in eight games: many resamples leave B without a point.
        judgments = judgments_of([("A", "B", 1)] * 7 + [("B", "A", 1)])
        ratings, _, dropped = bt.compute_bradley_terry(judgments, 400, seed=0)
        assert 0 < dropped < 400
        assert all(math.isfinite(r.low) and math.isfinite(r.high) for r in ratings)


@pytest.mark.skipif(not PAIRWISE.is_dir(), reason="needs ../shared/reference")
def test_reference_pairwise_files_rank_as_the_paper_elo():
    result = subprocess.run([sys.executable, str(EVAL_DIR / "elo.py"), str(PAIRWISE), "--method", "bt",
                             "--bootstrap", "200"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    models = [line.split()[1].replace("-vicuna-generations-topp0.9-temp0.7", "")
              for line in result.stdout.splitlines()[2:]]
    assert models == ["answer-gpt4", "65b-guanaco", "30b-guanaco", "answer-vicuna-13b", "answer-gpt35",
                      "13b-guanaco", "answer-bard", "7b-guanaco"]


def test_cli_no_fit_is_one_line(tmp_path):
    path = tmp_path / "a-vs-b-gpt-4-reviewer-threeclass.jsonl"
    path.write_text('{"question_id": 1, "score": 1}\n')
    result = subprocess.run([sys.executable, str(EVAL_DIR / "elo.py"), str(path), "--method", "bt"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: no Bradley-Terry fit")
