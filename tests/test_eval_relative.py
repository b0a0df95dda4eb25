"""judgekit.relative and eval/relative_score.py against scores worked out by hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EVAL_DIR = Path(__file__).resolve().parent.parent / "eval"

from judgekit import relative
from judgekit.reviews import Judgment

RELATIVE = EVAL_DIR.parent.parent / "shared" / "reference" / "qlora-eval" / "ratings-gpt4" / "vicuna" / "relative-gpt-3.5"
ANSWERS = EVAL_DIR.parent.parent / "shared" / "reference" / "qlora-eval" / "generations" / "vicuna"


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def review_dir(tmp_path):
    # sys shown first:  q1 8 vs 10, q2 6 vs 8   -> 14 / 18
    # sys shown second: q1 9 vs 9,  q2 5 vs 7   -> 14 / 16 (ref first: [ref, sys])
    write_rows(tmp_path / "sys-vs-ref-gpt-4-reviewer.jsonl",
               [{"question_id": 1, "score": [8, 10]}, {"question_id": 2, "score": [6, 8]},
                {"question_id": 3, "score": [-1, -1]}])
    write_rows(tmp_path / "ref-vs-sys-gpt-4-reviewer.jsonl",
               [{"question_id": 1, "score": [9, 9]}, {"question_id": 2, "score": [7, 5]}])
    write_rows(tmp_path / "other-vs-third-gpt-4-reviewer.jsonl", [{"question_id": 1, "score": [1, 10]}])
    return tmp_path


def test_hand_computed_scores(review_dir):
    result = subprocess.run([sys.executable, str(EVAL_DIR / "relative_score.py"), str(review_dir),
                             "--reference", "ref", "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)  # "other" and "third" never met the reference
    assert row["model"] == "sys"
    assert row["score"] == pytest.approx(100 * 28 / 34)
    assert row["score_first"] == pytest.approx(100 * 14 / 18)
    assert row["score_second"] == pytest.approx(100 * 14 / 16)
    assert (row["judgments"], row["unparsable"]) == (4, 1)
    # Two questions: per question 17/19 and 11/15; resampling gives 11/15, 28/34 or 17/19.
    assert row["low"] == pytest.approx(100 * 11 / 15) and row["high"] == pytest.approx(100 * 17 / 19)


def test_bootstrap_is_seeded():
    judgments = [Judgment(q, "s", "r", [1 + q % 9, 5]) for q in range(20)]
    def interval(seed):
        (score,) = relative.compute_relative_scores(judgments, "r", samples=200, seed=seed)
        return score.low, score.high

    assert interval(7) == interval(7)
    assert interval(7) != interval(8)


def test_unknown_reference_is_one_line(review_dir):
    result = subprocess.run([sys.executable, str(EVAL_DIR / "relative_score.py"), str(review_dir),
                             "--reference", "chatgpt"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: no judgment")


@pytest.mark.skipif(not RELATIVE.is_dir(), reason="needs ../shared/reference")
def test_reference_relative_files_give_the_paper_table():
    from judgekit.reviews import load_judgments, parse_answer_owner_specs

    owners = parse_answer_owner_specs([f"gpt-3.5={ANSWERS / 'answer_gpt35.jsonl'}"])
    judgments = load_judgments(sorted(RELATIVE.glob("*.jsonl")), judge="gpt4", owners=owners)
    scores = {s.model: round(s.score, 1) for s in relative.compute_relative_scores(judgments, "gpt-3.5", samples=10)}
    suffix = "-vicuna-generations-topp0.9-temp0.7"
    assert scores["65b-guanaco" + suffix] == 99.3 and scores["7b-guanaco" + suffix] == 87.0
    assert scores["gpt4"] == 114.5 and scores["bard"] == 94.8


def test_message_id_rows_as_the_openassistant_files_key_them(tmp_path):
    # Same numbers as the hand-computed case, with rows keyed by message_id only (and one file
    # still by question_id: each file's own key is used).
    write_rows(tmp_path / "sys-vs-ref-gpt-4-reviewer.jsonl",
               [{"message_id": "m-1", "score": [8, 10]}, {"message_id": "m-2", "score": [6, 8]}])
    write_rows(tmp_path / "ref-vs-sys-gpt-4-reviewer.jsonl",
               [{"question_id": "m-1", "score": [9, 9]}, {"question_id": "m-2", "score": [7, 5]}])
    result = subprocess.run([sys.executable, str(EVAL_DIR / "relative_score.py"), str(tmp_path),
                             "--reference", "ref", "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["score"] == pytest.approx(100 * 28 / 34)
    assert row["low"] == pytest.approx(100 * 11 / 15)  # the two files' rows met on their question ids
    assert "questions identified by question_id (1 file), message_id (1 file)" in result.stderr


def test_rows_without_an_id_are_one_line(tmp_path):
    write_rows(tmp_path / "sys-vs-ref-gpt-4-reviewer.jsonl", [{"qid": 1, "score": [8, 10]}])
    result = subprocess.run([sys.executable, str(EVAL_DIR / "relative_score.py"), str(tmp_path),
                             "--reference", "ref"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no question_id or message_id field" in result.stderr and "--id-key" in result.stderr
    named = subprocess.run([sys.executable, str(EVAL_DIR / "relative_score.py"), str(tmp_path),
                            "--reference", "ref", "-id", "qid", "--json"], capture_output=True, text=True, timeout=60)
    assert named.returncode == 0, named.stderr


def run_relative(review_dir, *flags):
    return subprocess.run([sys.executable, str(EVAL_DIR / "relative_score.py"), str(review_dir), "--reference", "ref",
                           *flags], capture_output=True, text=True, timeout=60)


def test_verdicts_of_another_kind_are_counted_apart_from_unparsable_ones(review_dir):
    write_rows(review_dir / "sys-vs-ref-gpt-4-reviewer-threeclass.jsonl",
               [{"question_id": 1, "score": 1, "verdict": "threeclass"},
                {"question_id": 2, "score": 0.5, "verdict": "threeclass"}])
    result = run_relative(review_dir, "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert (row["judgments"], row["unparsable"]) == (4, 1)  # as without the threeclass file
    assert "1 unparsable skipped, 2 threeclass verdicts of another kind skipped" in result.stderr


def test_files_without_score_pairs_are_one_line(tmp_path):
    write_rows(tmp_path / "sys-vs-ref-gpt-4-reviewer-threeclass.jsonl", [{"question_id": 1, "score": 1, "verdict": "threeclass"}])
    result = run_relative(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: no 10-point score pairs in these files (1 threeclass verdicts): relative scores need reviews written "
        "with --verdict scores; qlora-elo rates the other kinds")
