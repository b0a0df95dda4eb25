"""judgekit.naming and judgekit.reviews: which model is answer 1 and which is answer 2."""

import json

import pytest


from judgekit import naming, reviews
from judgekit.errors import InputError


class TestSplitReviewFilename:
    @pytest.mark.parametrize("name, judge, expected", [
        ("13b-guanaco-vicuna-generations-topp0.9-temp0.7-vs-answer-gpt4-gpt-4-reviewer-threeclass.jsonl", "gpt-4",
         ("13b-guanaco-vicuna-generations-topp0.9-temp0.7", "answer-gpt4")),
        ("gpt-3.5-vs-7b-flan-vicuna-generations-topp0.9-temp0.7-gpt4-reviewer.jsonl", "gpt4",
         ("gpt-3.5", "7b-flan-vicuna-generations-topp0.9-temp0.7")),
        ("gpt4-vs-gpt-3.5-gpt4-reviewer.jsonl", "gpt4", ("gpt4", "gpt-3.5")),
        ("model_a_vs_model-b_gpt-4_reviewer_threeclass.jsonl", "gpt-4", ("model_a", "model-b")),
        ("llama-vs-mistral-org_judge-7b-reviewer.jsonl", "org/judge-7b", ("llama", "mistral")),
    ])
    def test_names_with_hyphens(self, name, judge, expected):
        assert naming.split_review_filename(name, judge) == expected

    def test_wrong_judge_is_explained(self):
        with pytest.raises(InputError, match="--judge"):
            naming.split_review_filename("a-vs-b-gpt4-reviewer.jsonl", "gpt-4")

    def test_ambiguous_separator(self):
        with pytest.raises(InputError, match="exactly one"):
            naming.split_review_filename("a-vs-b-vs-c-gpt-4-reviewer.jsonl")

    def test_round_trip_with_the_writer(self):
        name = naming.review_filename("org/model-x", "answer-gpt35", "gpt-4o", "threeclass")
        assert naming.split_review_filename(name, "gpt-4o") == ("org_model-x", "answer-gpt35")


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


class TestLoadJudgments:
    def test_row_fields_win_over_file_name(self, tmp_path):
        path = write_rows(tmp_path / "x-vs-y-gpt-4-reviewer-threeclass.jsonl", [
            {"question_id": 1, "score": 1},
            {"question_id": 1, "score": 2, "answer1_model": "y", "answer2_model": "x"}])
        judgments = reviews.load_judgments([path])
        assert [(j.model1, j.model2, j.score) for j in judgments] == [("x", "y", 1), ("y", "x", 2)]

    def test_answer_ids_reorient_a_misnamed_file(self, tmp_path):
        answers = write_rows(tmp_path / "answer_ref.jsonl", [{"answer_id": "R1", "question_id": 1, "text": "r"}])
        path = write_rows(tmp_path / "sys-vs-ref-gpt4-reviewer.jsonl", [
            {"question_id": 1, "answer1_id": "R1", "answer2_id": "S1", "score": [9, 7]},   # misnamed
            {"question_id": 1, "answer1_id": "S1", "answer2_id": "R1", "score": [7, 9]}])  # as named
        stats = reviews.LoadStats()
        owners = reviews.parse_answer_owner_specs([f"ref={answers}"])
        judgments = reviews.load_judgments([path], judge="gpt4", owners=owners, stats=stats)
        assert [(j.model1, j.model2) for j in judgments] == [("ref", "sys"), ("sys", "ref")]
        assert stats.reoriented == 1 and stats.rows == 2

    def test_the_row_keeps_its_verdict_kind(self, tmp_path):
        path = write_rows(tmp_path / "x-vs-y-gpt-4-reviewer.jsonl", [
            {"question_id": 1, "score": 1, "verdict": "threeclass"},
            {"question_id": 2, "score": [8, 6], "verdict": "scores"},
            {"question_id": 3, "score": [8, 6]}])  # no field (the reference's rows): the shape says
        assert [j.verdict for j in reviews.load_judgments([path])] == ["threeclass", "scores", "scores"]

    def test_an_unknown_verdict_kind_is_refused_with_its_line(self, tmp_path):
        path = write_rows(tmp_path / "x-vs-y-gpt-4-reviewer.jsonl", [
            {"question_id": 1, "score": 1, "verdict": "threeclass"}, {"question_id": 2, "score": 1, "verdict": "5pt"}])
        with pytest.raises(InputError, match=r"reviewer.jsonl:2: unknown verdict kind '5pt'; known: threeclass"):
            reviews.load_judgments([path])

    def test_bad_answers_spec(self):
        with pytest.raises(InputError, match="NAME=FILE"):
            reviews.parse_answer_owner_specs(["just-a-path.jsonl"])
