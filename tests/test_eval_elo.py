"""judgekit.elo and eval/elo.py against ratings worked out by hand."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EVAL_DIR = Path(__file__).resolve().parent.parent / "eval"

import elo_speed  # (holds the previous implementation, the "same numbers" reference)
from judgekit import elo
from judgekit.reviews import Judgment

RATINGS = EVAL_DIR.parent.parent / "shared" / "reference" / "qlora-eval" / "ratings-gpt4"
PAIRWISE = RATINGS / "vicuna" / "pairwise"
OA_RATINGS = RATINGS / "oa"


def play(games, orders):
    """Play (G, R) game-index orders."""
    return elo.play_orderings(games, elo.encode_games(games)[0][np.asarray(orders)])


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
        final = play(games, [[0], [1]])
        assert final[0] == pytest.approx([1014.5305, 985.4695], abs=1e-4)
        assert final[0][0] == pytest.approx(1016 + 32 * (0.5 - expected_first(1016, 984)))

    def test_each_ordering_is_played_in_its_own_order(self):
        # Win then loss vs loss then win: 998.5305 / 1001.4695 and the mirror image; mean 1000.
        games = elo.build_games([Judgment(1, "A", "B", 1), Judgment(2, "A", "B", 2)])
        final = play(games, [[0, 1], [1, 0]])
        assert final[0] == pytest.approx([998.5305, 1001.4695], abs=1e-4)
        assert final[1] == pytest.approx([1001.4695, 998.5305], abs=1e-4)
        assert final.mean(axis=0) == pytest.approx([1000, 1000])

    def test_unparsable_self_play_and_score_pairs(self):
        judgments = [Judgment(1, "A", "B", -1), Judgment(2, "A", "B", [-1, -1]), Judgment(3, "B", "A", [8, 6]),
                     Judgment(4, "A", "A", 1)]
        ratings, skipped = elo.compute_elo(judgments, orderings=2)
        assert skipped == 3
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
    orders = np.stack([rng.permutation(len(judgments)) for _ in range(5)], axis=1)
    final = play(games, orders)
    for r in range(5):
        assert final[r] == pytest.approx(naive_elo(games, orders[:, r]), abs=1e-9)


def random_tournament(num_judgments, num_models, seed):
    rng = np.random.default_rng(seed)
    judgments = []
    for q in range(num_judgments):
        a, b = rng.choice(num_models, size=2, replace=False)
        judgments.append(Judgment(q, f"m{a}", f"m{b}", int(rng.choice([1, 2, 3, -1], p=[0.4, 0.35, 0.2, 0.05]))))
    return judgments


@pytest.mark.parametrize("background", [False, True])
def test_same_numbers_as_the_previous_implementation(background):
    # 4,500 orderings cross two chunk boundaries; the previous implementation drew each chunk with
    # rng.permuted over a (games, 2000) array, the current one shuffles ordering by ordering
    # (in a helper process when background=True). Same seed, same draws: equal to the last bit.
    judgments = random_tournament(120, 5, seed=1)
    previous = elo_speed.previous_final_ratings(judgments, 4500, seed=7)
    ratings, _ = elo.compute_elo(judgments, 4500, seed=7, background=background)
    by_model = {r.model: r for r in ratings}
    models = elo.build_games(judgments).models
    assert np.array_equal([by_model[m].elo for m in models], previous.mean(axis=0))
    assert np.array_equal([by_model[m].low for m in models], np.percentile(previous, 2.5, axis=0))


def test_orderings_do_not_depend_on_the_chunking():
    games = elo.build_games(random_tournament(50, 4, seed=2))
    codes = elo.encode_games(games)[0]
    whole = elo.shuffle_orderings(codes, 300, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    pieces = np.concatenate([elo.shuffle_orderings(codes, n, rng) for n in (70, 130, 100)], axis=1)
    assert np.array_equal(whole, pieces)
    assert all(sorted(column) == sorted(codes) for column in whole.T)  # each a permutation of the games


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
    assert "1 skipped (unparsable or self-play)" in result.stderr
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
    ratings, skipped = elo.compute_elo(judgments, orderings=2000)
    assert len(judgments) == 4480 and skipped == 13
    order = [r.model.replace("-vicuna-generations-topp0.9-temp0.7", "") for r in ratings]
    assert order == ["answer-gpt4", "65b-guanaco", "30b-guanaco", "answer-vicuna-13b", "answer-gpt35",
                     "13b-guanaco", "answer-bard", "7b-guanaco"]
    assert not any(math.isnan(r.elo) for r in ratings)


def oa_review_rows(verdicts):
    """Rows shaped like the released OpenAssistant ratings: keyed by message_id, no question_id."""
    return [{"review_id": f"r{i}", "message_id": f"00{i:02d}-uuid", "answer1_id": f"a{i}", "answer2_id": f"b{i}",
             "reviewer_id": 1, "metadata": {}, "text": f"...\n\n{v}", "score": v} for i, v in enumerate(verdicts)]


@pytest.mark.parametrize("method", ["elo", "bt"])
def test_cli_reads_message_id_rows(tmp_path, method):
    path = tmp_path / "13b-guanaco-oa-generations-vs-gpt-3.5-oa-generations-gpt-4-reviewer-threeclass.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in oa_review_rows([1, 2, 2, 3, 2, -1])))
    result = subprocess.run([sys.executable, str(EVAL_DIR / "elo.py"), str(path), "--method", method,
                             "--orderings", "50", "--bootstrap", "50", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == ["gpt-3.5-oa-generations", "13b-guanaco-oa-generations"]
    assert [(r["wins"], r["losses"], r["ties"]) for r in rows] == [(3, 1, 1), (1, 3, 1)]
    assert "questions identified by message_id" in result.stderr and "1 skipped" in result.stderr


@pytest.mark.skipif(not OA_RATINGS.is_dir(), reason="needs ../shared/reference")
def test_released_oa_rating_file_as_shipped():
    from judgekit.reviews import load_judgments

    judgments = load_judgments(sorted(OA_RATINGS.glob("*.jsonl")))
    assert judgments and all(isinstance(j.question_id, str) and len(j.question_id) == 36 for j in judgments)
    ratings, skipped = elo.compute_elo(judgments, orderings=200)
    assert len(judgments) == 953 and skipped == sum(1 for j in judgments if elo.outcome_of(j) is None)
    assert ratings[0].model == "gpt-3.5-oa-generations"  # ChatGPT ahead of Guanaco 13B, as in the paper
    assert sum(r.elo for r in ratings) == pytest.approx(2000)


def test_each_row_is_scored_by_its_verdict_kind_not_by_its_score_type(tmp_path):
    from judgekit.reviews import load_judgments

    # One file of both kinds (the judge writes each row's kind in "verdict"); the pairs hold ints,
    # as some of the reference's relative files do.
    path = tmp_path / "p-vs-q-gpt-4-reviewer.jsonl"
    path.write_text("".join(json.dumps({"question_id": q, "score": s, "verdict": v}) + "\n" for q, s, v in [
        (1, [8, 6], "scores"),  # p wins
        (2, 2, "threeclass"),  # q wins
        (3, [7, 7], "scores"),  # tie
        (4, 2, "scores"),  # not a pair: no game (three-class would read "answer 2 better")
        (5, [6, 8], "threeclass"),  # not a class: no game (a pair would read "q wins")
    ]))
    judgments = load_judgments([path])
    ratings, skipped = elo.compute_elo(judgments, orderings=10)
    assert skipped == 2
    assert {(r.model, r.wins, r.losses, r.ties) for r in ratings} == {("p", 1, 1, 1), ("q", 1, 1, 1)}
    assert [j.verdict for j in judgments] == ["scores", "threeclass", "scores", "scores", "threeclass"]
    assert [elo.outcome_of(j) for j in judgments] == [1.0, 0.0, 0.5, None, None]


def test_a_review_file_named_twice_or_copied_counts_once(tmp_path, caplog):
    from judgekit.reviews import LoadStats, load_judgments

    rows = [{"review_id": f"r{q}", "question_id": q, "score": q % 3 + 1} for q in range(1, 5)]
    path = tmp_path / "p-vs-q-gpt-4-reviewer.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    copy = tmp_path / "copy" / path.name
    copy.parent.mkdir()
    copy.write_text(path.read_text() + json.dumps({"review_id": "r5", "question_id": 5, "score": 1}) + "\n")
    stats = LoadStats()
    judgments = load_judgments([path, path, copy], stats=stats)
    assert [j.question_id for j in judgments] == [1, 2, 3, 4, 5]
    assert stats.duplicates == 8 and "8 review rows read twice" in caplog.text
