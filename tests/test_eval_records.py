"""Questions (qlorakit.questions) and answers (judgekit.records) in every reference shape, torn lines, the writer."""

import json

import pytest


from judgekit import records
from judgekit.errors import InputError
from qlorakit import jsonl, questions


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


class TestLoadQuestions:
    def test_three_shapes(self, tmp_path):
        path = write_lines(tmp_path / "q.jsonl", [
            json.dumps({"question_id": 1, "text": "Why?", "category": "generic"}),
            json.dumps({"question_id": "m-2", "input": "### Human: Hi ### Assistant:", "output": "Hello"}),
            json.dumps({"question_id": 3, "category": "math", "turns": ["1+1?", "and 2+2?"]}),
        ])
        loaded = questions.load_questions(path)
        assert [(q.question_id, q.text, q.category) for q in loaded] == [
            (1, "Why?", "generic"), ("m-2", "### Human: Hi ### Assistant:", "general"), (3, "1+1?", "math")]

    def test_duplicate_id_is_an_error(self, tmp_path):
        path = write_lines(tmp_path / "q.jsonl", [json.dumps({"question_id": 1, "text": "a"})] * 2)
        with pytest.raises(InputError, match=r"q.jsonl:2: duplicate question_id"):
            questions.load_questions(path)

    def test_bad_json_names_file_and_line(self, tmp_path):
        path = write_lines(tmp_path / "q.jsonl", [json.dumps({"question_id": 1, "text": "a"}), "{oops", "{}"])
        with pytest.raises(InputError, match=r"q.jsonl:2: invalid JSON"):
            questions.load_questions(path)

    def test_a_line_that_is_no_object_names_file_and_line(self, tmp_path):
        path = write_lines(tmp_path / "q.jsonl", [json.dumps({"question_id": 1, "text": "a"}), "[1, 2]"])
        with pytest.raises(InputError, match=r"q.jsonl:2: an array, not a JSON object \(a row\)$"):
            questions.load_questions(path)

    def test_missing_file(self, tmp_path):
        with pytest.raises(InputError, match="no such file"):
            questions.load_questions(tmp_path / "absent.jsonl")


class TestLoadAnswers:
    def test_text_shape_keeps_ids(self, tmp_path):
        path = write_lines(tmp_path / "answer_bard.jsonl", [json.dumps({"answer_id": "x1", "question_id": 1, "text": "Yes."})])
        answer = records.load_answers(path)[1]
        assert (answer.answer_id, answer.text, answer.model) == ("x1", "Yes.", "answer-bard")

    def test_generation_shape_is_truncated_and_gets_stable_ids(self, tmp_path):
        row = {"question_id": 7, "text": "The question itself", "prompt": "...",
               "generation": "Four.### Human: and five?### Assistant: Five."}
        path = write_lines(tmp_path / "7b-gen.jsonl", [json.dumps(row)])
        first = records.load_answers(path)[7]
        assert first.text == "Four."  # not the question in "text", not the next turn
        assert first.answer_id == records.load_answers(path)[7].answer_id  # stable across runs
        assert first.answer_id != records.load_answers(path, model="other")[7].answer_id

    def test_generation_truncated_preferred_and_chat_preamble_cut(self, tmp_path):
        row = {"question_id": 1, "text": "q", "generation": "long ### Human: more",
               "generation_truncated": "Short. A chat between a curious human and an assistant."}
        path = write_lines(tmp_path / "g.jsonl", [json.dumps(row)])
        assert records.load_answers(path)[1].text == "Short."

    def test_row_without_answer_text(self, tmp_path):
        path = write_lines(tmp_path / "a.jsonl", [json.dumps({"question_id": 1})])
        with pytest.raises(InputError, match=r"a.jsonl:1: an answer needs"):
            records.load_answers(path)


class TestTornLines:
    def test_torn_tail_ignored_only_when_allowed(self, tmp_path):
        path = tmp_path / "out.jsonl"
        path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
        assert [row for _, row in jsonl.read_jsonl(path, tolerate_torn_tail=True)] == [{"a": 1}, {"a": 2}]
        with pytest.raises(InputError, match=r"out.jsonl:3"):
            list(jsonl.read_jsonl(path))

    def test_bad_line_in_the_middle_is_never_ignored(self, tmp_path):
        path = tmp_path / "out.jsonl"
        path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
        with pytest.raises(InputError, match=r"out.jsonl:2"):
            list(jsonl.read_jsonl(path, tolerate_torn_tail=True))

    def test_appender_cuts_a_torn_tail_before_writing(self, tmp_path):
        path = tmp_path / "out.jsonl"
        path.write_text('{"k": 1}\n{"k": ')
        with jsonl.JsonlAppender(path) as writer:
            writer.write({"k": 2})
        assert [json.loads(line) for line in path.read_text().splitlines()] == [{"k": 1}, {"k": 2}]

    def test_done_keys(self, tmp_path):
        path = tmp_path / "out.jsonl"
        assert jsonl.load_done_keys(path, lambda row: row["k"]) == set()
        path.write_text('{"k": 1}\n{"k": 2}\n{"k"')
        assert jsonl.load_done_keys(path, lambda row: row["k"]) == {1, 2}


class TestIdKeys:
    def test_openassistant_files_are_keyed_by_message_id(self, tmp_path):
        question_file = write_lines(tmp_path / "oa_questions.jsonl", [
            json.dumps({"message_id": "m1", "question_id": "m1", "text": "### Human: Hi ### Assistant:"})])
        answers = write_lines(tmp_path / "gen.jsonl", [json.dumps({"message_id": "m1", "generation": "Hello."})])
        (question,) = questions.load_questions(question_file)
        assert question.ids == {"question_id": "m1", "message_id": "m1"}
        key, by_id = records.load_keyed_answers(answers)
        assert key == "message_id" and by_id["m1"].text == "Hello."

    def test_named_key_wins_and_is_checked(self, tmp_path):
        path = write_lines(tmp_path / "q.jsonl", [json.dumps({"question_id": 1, "message_id": "m1", "text": "x"})])
        (question,) = questions.load_questions(path, id_key="message_id")
        assert question.question_id == "m1" and list(question.ids) == ["message_id", "question_id"]
        with pytest.raises(InputError, match="q.jsonl:1: missing field"):
            questions.load_questions(path, id_key="uid")

    def test_files_keyed_differently_have_no_shared_key(self, tmp_path):
        rows = {"a.jsonl": [(1, {"question_id": 1})], "b.jsonl": [(1, {"message_id": "m"})]}
        with pytest.raises(InputError, match="different fields"):
            questions.detect_id_key(rows)
