"""judgekit.elo and eval/elo.py against ratings worked out by hand."""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

EVAL_DIR = Path(__file__).resolve().parent.parent / "eval"
sys.path.insert(0, str(EVAL_DIR))

from judgekit import elo  # noqa: E402
from judgekit.reviews import Judgment  # noqa: E402

PAIRWISE = EVAL_DIR.parent.parent / "shared" / "reference" / "qlora-eval" / "ratings-gpt4" / "vicuna" / "pairwise"


def expected_first(first, second):
    return 1 / (1 + 10 ** ((second - first) / 400))


class TestByHand:
    def test_one_win_moves_each_side_by_k_half(self):
        # Equal ratings: expected 0.5, so the winner gains 32 * 0.5 = 16.
        ratings, skipped = elo.compute_elo([Judgment(1, "A", "B", 1)], orderings=3)
        assert skipped == 0
        assert {(r.model, r.elo, r.low, r.high) for r in ratings} == {("A", 1016.0, 1016.0, 1016.0),
                                                                     ("B", 984.0, 984.0, 984.0)}

    def test_tie_after_a_win_counts_half(self):
        # After A beats B: 1016 / 984. A tie then costs A 32 * (0.5 - E) with E = 0.545922.
        games = elo.build_games([Judgment(1, "A", "B", 1), Judgment(2, "A", "B", 3)])
        final = elo.play_orderings(games, np.array([[0], [1]]))
        assert final[0] == pytest.approx([1014.5305, 985.4695], abs=1e-4)
        assert final[0][0] == pytest.approx(1016 + 32 * (0.5 - expected_first(1016, 984)))

    def test_each_ordering_is_played_in_its_own_order(self):
        # Win then loss vs loss then win: 998.5305 / 1001.4695 and the mirror image; mean 1000.
        games = elo.build_games([Judgment(1, "A", "B", 1), Judgment(2, "A", "B", 2)])
        final = elo.play_orderings(games, np.array([[0, 1], [1, 0]]))
        assert final[0] == pytest.approx([998.5305, 1001.4695], abs=1e-4)
        assert final[1] == pytest.approx([1001.4695, 998.5305], abs=1e-4)
        assert final.mean(axis=0) == pytest.approx([1000, 1000])

    def test_unparsable_and_score_pairs(self):
        judgments = [Judgment(1, "A", "B", -1), Judgment(2, "A", "B", [-1, -1]), Judgment(3, "B", "A", [8, 6])]
        ratings, skipped = elo.compute_elo(judgments, orderings=2)
        assert skipped == 2
        assert [(r.model, r.elo, r.wins, r.losses) for r in ratings] == [("B", 1016.0, 1, 0), ("A", 984.0, 0, 1)]


def naive_elo(games, order, k=32.0):
    ratings = {m: 1000.0 for m in range(len(games.models))}
    for g in order:
        a, b, s = games.first[g], games.second[g], games.outcome[g]
        e = expected_first(ratings[a], ratings[b])
        ratings[a] += k * (s - e)
        ratings[b] -= k * (s - e)
    return [ratings[m] for m in range(len(games.models))]


def test_vectorised_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    names = ["m0", "m1", "m2", "m3"]
    judgments = []
    for q in range(40):
        a, b = rng.choice(4, size=2, replace=False)
        judgments.append(Judgment(q, names[a], names[b], int(rng.integers(1, 4))))
    games = elo.build_games(judgments)
    orders = elo.random_orders(len(judgments), 5, rng)
    final = elo.play_orderings(games, orders)
    for r in range(5):
        assert final[r] == pytest.approx(naive_elo(games, orders[:, r]))


def test_seeded():
    judgments = [Judgment(q, "A", "B", 1 + q % 3) for q in range(30)]
    assert elo.compute_elo(judgments, 50, seed=3) == elo.compute_elo(judgments, 50, seed=3)
    assert elo.compute_elo(judgments, 50, seed=3) != elo.compute_elo(judgments, 50, seed=4)


def test_cli_json_and_plot(tmp_path):
    path = tmp_path / "alpha-7b-vs-beta-13b-gpt-4-reviewer-threeclass.jsonl"
    path.write_text("".join(json.dumps({"question_id": q, "score": s}) + "\n" for q, s in [(1, 1), (2, -1)]))
    plot = tmp_path / "elo.png"
    result = subprocess.run([sys.executable, str(EVAL_DIR / "elo.py"), str(path), "--orderings", "10", "--json",
                             "--plot", str(plot)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["model"], r["elo"]) for r in rows] == [("alpha-7b", 1016.0), ("beta-13b", 984.0)]
    assert "1 unparsable skipped" in result.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_file_name_is_one_line(tmp_path):
    path = tmp_path / "nonsense.jsonl"
    path.write_text(json.dumps({"question_id": 1, "score": 1}) + "\n")
    result = subprocess.run([sys.executable, str(EVAL_DIR / "elo.py"), str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:") and "--judge" in result.stderr


@pytest.mark.skipif(not PAIRWISE.is_dir(), reason="needs ../shared/reference")
def test_reference_pairwise_files_rank_as_in_the_paper():
    from judgekit.reviews import load_judgments

    judgments = load_judgments(sorted(PAIRWISE.glob("*.jsonl")))
    started = time.perf_counter()
    ratings, skipped = elo.compute_elo(judgments, orderings=2000)
    assert time.perf_counter() - started < 20
    assert len(judgments) == 4480 and skipped == 13
    order = [r.model.replace("-vicuna-generations-topp0.9-temp0.7", "") for r in ratings]
    assert order == ["answer-gpt4", "65b-guanaco", "30b-guanaco", "answer-vicuna-13b", "answer-gpt35",
                     "13b-guanaco", "answer-bard", "7b-guanaco"]
    assert not any(math.isnan(r.elo) for r in ratings)
