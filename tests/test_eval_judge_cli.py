"""eval_gpt_review.py and qa_baseline_gpt.py against a loopback OpenAI-compatible stub that
rate-limits, fails, stalls and hangs: every judgment completes once, a killed run resumes
without paying twice, and the API key never shows up in what we write or print."""

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EVAL_DIR = Path(__file__).resolve().parent.parent / "eval"

from judgekit.prompts import PACKAGED_FILES_DIR
from judgekit.stub import StubServer
from judgekit.verdicts import SCORES, THREECLASS, parse_threeclass

SECRET = "sk-test-" + secrets.token_hex(12)
CONTINUATION = "### Human: and now something else"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def inputs(tmp_path):
    """Five questions (one coding, one in a category only 'general' covers), answers in the two
    reference shapes, and a tiny prompt/reviewer pair of our own."""
    categories = ["generic", "coding", "math", "roleplay", "generic"]
    questions = [{"question_id": i, "text": f"Question number {i}?", "category": c}
                 for i, c in enumerate(categories, start=1)]
    answers_a = [{"answer_id": f"a{i}", "question_id": i, "text": f"Answer A{i}."} for i in range(1, 6)]
    answers_b = [{"question_id": i, "text": f"Question number {i}?", "prompt": "...",
                  "generation": f"Answer B{i}.{CONTINUATION}", "generation_truncated": f"Answer B{i}."}
                 for i in range(1, 6)]
    prompt = {"system_prompt": "Judge.", "prompt_template": "Q {question}\nA1 {answer_1}\nA2 {answer_2}\n{prompt}",
              "defaults": {"prompt": "End with 1, 2 or 3."}, "description": "test"}
    return {
        "q": write_jsonl(tmp_path / "questions.jsonl", questions),
        "a": write_jsonl(tmp_path / "model_a.jsonl", answers_a),
        "b": write_jsonl(tmp_path / "model_b.jsonl", answers_b),
        "p": write_jsonl(tmp_path / "tiny_threeclass.jsonl", [
            {"prompt_id": 1, "category": "general", **prompt},
            {"prompt_id": 2, "category": "coding", **prompt}]),
        "r": write_jsonl(tmp_path / "reviewer.jsonl", [
            {"reviewer_id": "rev-general", "prompt_id": 1, "metadata": {"temperature": 0.2, "max_tokens": 64},
             "description": "t", "category": "general"},
            {"reviewer_id": "rev-coding", "prompt_id": 2, "metadata": {"temperature": 0.2, "max_tokens": 64},
             "description": "t", "category": "coding"}]),
        "out": tmp_path / "out",
    }


def environment(stub):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_BASE_URL=stub.base_url, OPENAI_API_KEY=SECRET)
    return env


def review_command(inputs, *extra):
    # An output without .jsonl is a directory to create (trailing separator), named by the models.
    out = str(inputs["out"]) if inputs["out"].suffix == ".jsonl" else f"{inputs['out']}{os.sep}"
    prompt_files = [item for flag, key in (("-p", "p"), ("-r", "r")) if inputs[key] for item in (flag, str(inputs[key]))]
    return [sys.executable, str(EVAL_DIR / "eval_gpt_review.py"), "-q", str(inputs["q"]),
            "-a", str(inputs["a"]), str(inputs["b"]), *prompt_files, "-o", out, "--backoff-base", "0.05", *extra]


def run(command, stub, cwd):
    return subprocess.run(command, env=environment(stub), cwd=cwd, capture_output=True, text=True, timeout=60)


def output_file(inputs):
    (path,) = inputs["out"].glob("*.jsonl")
    return path


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def order_key(row):
    return (row["question_id"], row["answer1_model"], row["answer2_model"])


@contextlib.contextmanager
def review_held_at(inputs, cwd, rows_on_disk):
    """(stub, process, output): a judge run (both orders, 2 at a time) into cwd/reviews.jsonl against
    a stub that lets it pay for rows_on_disk replies, once it has written them; its other requests
    wait for stub.open_gate(). The process is killed on leaving, if still running."""
    out = inputs["out"] = cwd / "reviews.jsonl"
    with StubServer(latency=0.02, bill_limit=rows_on_disk) as stub:
        process = subprocess.Popen(review_command(inputs, "--both-orders", "--concurrency", "2"),
                                   env=environment(stub), cwd=cwd, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (not out.exists() or len(read_rows(out)) < rows_on_disk):
                time.sleep(0.05)
            time.sleep(0.2)  # anything more would be paid for past the limit: nothing comes
            yield stub, process, out
        finally:
            process.kill()
            process.wait()


class TestReviewAgainstFaultyServer:
    def test_every_judgment_completes_once(self, inputs, tmp_path):
        faults = ["429", "500", "slow", "429", "hang", "500"]
        # "slow" (0.2 s) stays well inside the 1 s timeout even on a loaded machine; "hang" does not.
        with StubServer(latency=0.02, faults=faults, retry_after=0.05, slow_latency=0.2, hang_seconds=1.5) as stub:
            result = run(review_command(inputs, "--both-orders", "--timeout", "1", "--concurrency", "4"), stub, tmp_path)
            assert result.returncode == 0, result.stderr
            rows = read_rows(output_file(inputs))
            # 5 questions x 2 orders, each paid for exactly once, each fault retried once.
            assert len(rows) == 10
            assert len({order_key(r) for r in rows}) == 10
            assert stub.billed_total == 10 and set(stub.billed.values()) == {1}
            assert stub.statuses[429] == 2 and stub.statuses[500] == 2
            assert stub.requests == 10 + len(faults) - 1  # "slow" is a success, not a retry
        assert output_file(inputs).name == "model-a-vs-model-b-gpt-4-reviewer-threeclass.jsonl"
        sent = [m["content"] for body in stub.bodies for m in body["messages"]]
        assert not any(CONTINUATION in text for text in sent)  # generations were truncated
        for row in rows:
            assert {"review_id", "question_id", "answer1_id", "answer2_id", "reviewer_id", "text", "score",
                    "answer1_model", "answer2_model", "judge_model"} <= set(row)
            assert row["score"] == parse_threeclass(row["text"])
            assert row["judge_model"] == "gpt-4"
            expected = "rev-coding" if row["question_id"] == 2 else "rev-general"
            assert row["reviewer_id"] == expected  # category match, else the general fallback
        first = {r["question_id"]: r for r in rows if r["answer1_model"] == "model-a"}
        second = {r["question_id"]: r for r in rows if r["answer1_model"] == "model-b"}
        assert first[1]["answer1_id"] == second[1]["answer2_id"] == "a1"

    def test_killed_run_resumes_and_pays_for_nothing_twice(self, inputs, tmp_path):
        with review_held_at(inputs, tmp_path, 4) as (stub, process, out):
            assert len(read_rows(out)) == 4
            process.kill()
            process.wait()
            with out.open("a") as handle:  # a row torn by the kill
                handle.write('{"review_id": "torn", "question_id": 5, "answer1_id"')
            stub.open_gate()
            result = run(review_command(inputs, "--both-orders"), stub, tmp_path)
            assert result.returncode == 0, result.stderr
            rows = read_rows(out)
            assert len(rows) == 10 and len({order_key(r) for r in rows}) == 10
            assert stub.billed_total == 10 and set(stub.billed.values()) == {1}
            requests_after = stub.requests
            again = run(review_command(inputs, "--both-orders"), stub, tmp_path)
            assert again.returncode == 0 and stub.requests == requests_after  # nothing left to ask

    def test_a_second_run_on_the_same_file_refuses_and_pays_for_nothing(self, inputs, tmp_path):
        with review_held_at(inputs, tmp_path, 4) as (stub, first, out):
            second = run(review_command(inputs, "--both-orders"), stub, tmp_path)
            assert second.returncode == 2
            assert f"{out} is locked by another run (pid {first.pid}" in second.stderr.strip().splitlines()[-1]
            assert stub.billed_total == 4
            stub.open_gate()
            assert first.wait(timeout=60) == 0
            rows = read_rows(out)
            assert len(rows) == 10 and len({order_key(r) for r in rows}) == 10
            assert stub.billed_total == 10 and set(stub.billed.values()) == {1}
        assert not os.path.exists(f"{out}.lock")

    def test_judgments_of_regenerated_answers_are_not_mixed_with_new_ones(self, inputs, tmp_path):
        inputs["out"] = tmp_path / "reviews.jsonl"
        with StubServer(latency=0.01) as stub:
            assert run(review_command(inputs, "--both-orders"), stub, tmp_path).returncode == 0
            rows = [json.loads(line) for line in inputs["b"].read_text().splitlines()]
            rows[1]["generation_truncated"] = "Answer B2, generated again."
            write_jsonl(inputs["b"], rows)
            billed = stub.billed_total
            again = run(review_command(inputs, "--both-orders"), stub, tmp_path)
            assert again.returncode == 2 and stub.billed_total == billed
            assert again.stderr.strip().splitlines()[-1].startswith(
                f"error: {inputs['out']} holds 2 judgments of other answers to these questions by the same models")
        assert len(read_rows(inputs["out"])) == 10

    def test_ctrl_c_stops_in_one_line_with_every_paid_reply_on_disk(self, inputs, tmp_path):
        out = inputs["out"] = tmp_path / "reviews.jsonl"
        with StubServer(latency=0.02, bill_limit=3) as stub:
            process = subprocess.Popen(review_command(inputs, "--both-orders", "--concurrency", "2"),
                                       env=environment(stub), cwd=tmp_path, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            try:
                deadline = time.monotonic() + 30
                # 3 paid and written, 2 held in flight (a reply still on the wire at Ctrl-C is lost).
                while time.monotonic() < deadline and (stub.requests < 5 or not out.exists()
                                                       or len(read_rows(out)) < 3):
                    time.sleep(0.05)
                process.send_signal(signal.SIGINT)
                _, stderr = process.communicate(timeout=30)
            finally:
                process.kill()
            assert process.returncode == 130
            assert "Traceback" not in stderr
            assert stderr.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
            assert len(read_rows(out)) == stub.billed_total == 3  # every paid reply, and only those
            stub.open_gate()
            again = run(review_command(inputs, "--both-orders"), stub, tmp_path)
            assert again.returncode == 0 and len(read_rows(out)) == 10
            assert stub.billed_total == 10 and set(stub.billed.values()) == {1}

    def test_failed_requests_are_retried_by_the_next_run(self, inputs, tmp_path):
        inputs["out"] = tmp_path / "reviews.jsonl"
        with StubServer(faults=["500", "500"]) as stub:
            first = run(review_command(inputs, "--max-retries", "0", "--concurrency", "1"), stub, tmp_path)
            assert first.returncode == 1
            assert "rerun the same command" in first.stderr
            assert len(read_rows(inputs["out"])) == 3
            second = run(review_command(inputs, "--max-retries", "0"), stub, tmp_path)
            assert second.returncode == 0
            assert len(read_rows(inputs["out"])) == 5
            assert stub.billed_total == 5 and stub.requests == 7

    def test_malformed_replies_are_retried_and_paid_once(self, inputs, tmp_path):
        inputs["out"] = tmp_path / "reviews.jsonl"
        faults = ["notjson", "nochoices", "empty", "500", "429"]
        with StubServer(faults=faults, retry_after=0.05) as stub:
            result = run(review_command(inputs, "--concurrency", "1"), stub, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        rows = read_rows(inputs["out"])
        assert len(rows) == 5 and len({order_key(r) for r in rows}) == 5
        assert stub.billed_total == 5 and set(stub.billed.values()) == {1}  # one good reply each
        assert stub.malformed == 3 and stub.requests == 5 + len(faults)
        assert all(row["text"].strip() for row in rows)

    def test_replies_that_never_come_right_fail_alone_and_leave_no_file(self, inputs, tmp_path):
        inputs["out"] = tmp_path / "reviews.jsonl"
        with StubServer(faults=["notjson", "nochoices", "empty"] * 4) as stub:
            first = run(review_command(inputs, "--max-retries", "2", "--concurrency", "1"), stub, tmp_path)
            assert first.returncode == 1 and "Traceback" not in first.stderr
            # Four judgments got three malformed replies each (1 try + 2 retries): failed, not written.
            assert "1 done, 4 failed" in first.stderr
            assert "gave up on question_id=1 answer1_id=a1" in first.stderr  # which one, said once
            assert "a reply with empty content at try 3" in first.stderr, first.stderr
            assert first.stderr.count("gave up on") == 4
            assert len(read_rows(inputs["out"])) == 1
            requests_before = stub.requests
            second = run(review_command(inputs), stub, tmp_path)
            assert second.returncode == 0
            assert stub.requests - requests_before == 4  # only the failed ones are asked again
            assert len(read_rows(inputs["out"])) == 5 and stub.billed_total == 5
        with StubServer(faults=["notjson"] * 10) as broken:
            inputs["out"] = tmp_path / "never.jsonl"
            failed = run(review_command(inputs, "--max-retries", "1"), broken, tmp_path)
        assert failed.returncode == 1 and "0 done, 5 failed" in failed.stderr
        assert not inputs["out"].exists()  # no empty file that a later run could take as finished

    def test_reply_without_verdict_is_kept_not_bought_again(self, inputs, tmp_path):
        inputs["out"] = tmp_path / "reviews.jsonl"
        with StubServer(reply=lambda messages: "Both answers are fine.") as stub:
            first = run(review_command(inputs), stub, tmp_path)
            again = run(review_command(inputs), stub, tmp_path)
        assert first.returncode == 0 and again.returncode == 0
        assert "5 replies hold no readable threeclass verdict" in first.stderr
        rows = read_rows(inputs["out"])
        assert len(rows) == 5 and {r["score"] for r in rows} == {-1}
        assert stub.requests == 5  # recorded as unparsable, never paid for twice

    def test_api_key_never_printed_or_written(self, inputs, tmp_path):
        inputs["out"] = tmp_path / "reviews.jsonl"
        with StubServer(faults=["429", "500"], retry_after=0.05) as stub:
            ok = run(review_command(inputs, "-v"), stub, tmp_path)
        with StubServer(faults=["401"] * 20) as refusing:
            inputs["out"] = tmp_path / "refused.jsonl"
            refused = run(review_command(inputs, "-v"), refusing, tmp_path)
        assert ok.returncode == 0 and refused.returncode == 2
        assert refused.stderr.strip().splitlines()[-1].startswith("error: the server refused")
        assert f"Bearer {SECRET}" in stub.authorizations  # the key was really sent...
        written = "".join(p.read_text() for p in tmp_path.glob("*.jsonl"))
        for text in (ok.stdout, ok.stderr, refused.stdout, refused.stderr, written):
            assert SECRET not in text  # ...and never shown
        assert "Traceback" not in refused.stderr


class TestPackagedPrompts:
    @pytest.mark.parametrize("extra, prompt_file, kind", [
        ((), "judge_prompt_threeclass.jsonl", THREECLASS),
        (("--verdict", "scores"), "judge_prompt_relative.jsonl", SCORES),
    ])
    def test_judges_with_the_packaged_files_when_none_are_named(self, inputs, tmp_path, extra, prompt_file, kind):
        inputs["p"] = inputs["r"] = None
        with StubServer() as stub:
            result = run(review_command(inputs, *extra), stub, tmp_path)
        assert result.returncode == 0, result.stderr
        assert os.path.join(PACKAGED_FILES_DIR, prompt_file) in result.stderr  # the log names the files used
        packaged = {row["category"]: row for row in read_rows(Path(PACKAGED_FILES_DIR) / prompt_file)}
        rows = read_rows(output_file(inputs))
        assert {r["question_id"]: r["reviewer_id"] for r in rows} == {
            1: "judge-general", 2: "judge-coding", 3: "judge-math", 4: "judge-general", 5: "judge-general"}
        assert {r["verdict"] for r in rows} == {kind}
        sent = {body["messages"][1]["content"]: body["messages"][0]["content"] for body in stub.bodies}
        assert set(sent.values()) == {row["system_prompt"] for row in packaged.values()}
        (coding,) = [user for user in sent if "Question number 2?" in user]
        assert packaged["coding"]["defaults"]["prompt"] in coding


class TestReviewInputErrors:
    def one_line_error(self, result):
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        return result.stderr.strip().splitlines()[-1]

    def test_missing_file(self, inputs, tmp_path):
        inputs["q"] = tmp_path / "nope.jsonl"
        with StubServer() as stub:
            line = self.one_line_error(run(review_command(inputs), stub, tmp_path))
        assert line.startswith("error:") and "nope.jsonl" in line and stub.requests == 0

    def test_bad_json_names_file_and_line(self, inputs, tmp_path):
        inputs["a"].write_text('{"answer_id": "a1", "question_id": 1, "text": "x"}\n{"answer_id": \n')
        with StubServer() as stub:
            line = self.one_line_error(run(review_command(inputs), stub, tmp_path))
        assert f"{inputs['a']}:2: invalid JSON" in line

    def test_unknown_category_without_fallback(self, inputs, tmp_path):
        write_jsonl(inputs["r"], [{"reviewer_id": "c", "prompt_id": 2, "category": "coding", "metadata": {}}])
        with StubServer() as stub:
            line = self.one_line_error(run(review_command(inputs), stub, tmp_path))
        assert "unknown prompt category 'generic'" in line and stub.requests == 0

    def test_reviewer_pointing_at_missing_prompt(self, inputs, tmp_path):
        write_jsonl(inputs["r"], [{"reviewer_id": "g", "prompt_id": 9, "category": "general", "metadata": {}}])
        with StubServer() as stub:
            line = self.one_line_error(run(review_command(inputs), stub, tmp_path))
        assert "prompt_id 9" in line


class TestQaBaseline:
    def test_answers_every_question_once_and_resumes(self, inputs, tmp_path):
        out = tmp_path / "answers" / "answer_stub.jsonl"
        command = [sys.executable, str(EVAL_DIR / "qa_baseline_gpt.py"), "-q", str(inputs["q"]), "-o", str(out),
                   "-m", "stub-model", "--backoff-base", "0.05"]
        with StubServer(faults=["429", "500"], retry_after=0.05) as stub:
            first = run(command, stub, tmp_path)
            requests = stub.requests
            second = run(command, stub, tmp_path)
            assert first.returncode == 0 and second.returncode == 0, first.stderr
            assert stub.requests == requests == 7  # 5 answers + 2 retries, nothing on the rerun
        rows = read_rows(out)
        assert sorted(r["question_id"] for r in rows) == [1, 2, 3, 4, 5]
        assert all(r["model_id"] == "stub-model" and r["answer_id"] and r["text"] for r in rows)
        assert SECRET not in first.stderr + first.stdout + out.read_text()

    def test_a_run_the_api_fails_throughout_leaves_no_answer_file(self, inputs, tmp_path):
        out = tmp_path / "answers" / "answer_stub.jsonl"
        command = [sys.executable, str(EVAL_DIR / "qa_baseline_gpt.py"), "-q", str(inputs["q"]), "-o", str(out),
                   "--max-retries", "1", "--backoff-base", "0.01"]
        with StubServer(faults=["500", "notjson"] * 5) as stub:
            result = run(command, stub, tmp_path)
        assert result.returncode == 1 and "0 done, 5 failed" in result.stderr
        assert stub.requests == 10 and not out.exists()


REFERENCE_EVAL = EVAL_DIR.parent.parent / "shared" / "reference" / "qlora-eval"


@pytest.fixture
def oa_inputs(inputs, tmp_path):
    """The same judging inputs in the OpenAssistant benchmark's shape: questions carry message_id
    and question_id, answers only message_id (one file in the generation format without answer
    ids, as the released Guanaco files; one with answer ids, as the released ChatGPT file)."""
    ids = [f"{i:04d}-msg" for i in range(1, 4)]
    write_jsonl(inputs["q"], [{"input": f"### Human: Q{i}? ### Assistant:", "text": f"### Human: Q{i}? ### Assistant:",
                               "message_id": m, "question_id": m, "category": "generic"} for i, m in enumerate(ids)])
    write_jsonl(inputs["a"], [{"input": "...", "message_id": m, "generation": f"Guanaco {m}.{CONTINUATION}",
                               "generation_truncated": f"Guanaco {m}."} for m in ids])
    write_jsonl(inputs["b"], [{"input": "...", "message_id": m, "generation": f"ChatGPT {m}.", "answer_id": f"g-{m}"}
                              for m in reversed(ids)])
    inputs["ids"] = ids
    return inputs


class TestOpenAssistantShape:
    def test_joins_on_message_id_by_itself(self, oa_inputs, tmp_path):
        with StubServer() as stub:
            result = run(review_command(oa_inputs), stub, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "joining answers to questions on message_id" in result.stderr
        rows = read_rows(output_file(oa_inputs))
        assert sorted(r["message_id"] for r in rows) == oa_inputs["ids"]
        assert all(r["answer2_id"] == f"g-{r['message_id']}" for r in rows)
        assert stub.billed_total == 3

    def test_named_key_and_resume(self, oa_inputs, tmp_path):
        with StubServer() as stub:
            first = run(review_command(oa_inputs, "-id", "message_id"), stub, tmp_path)
            second = run(review_command(oa_inputs, "--id-key", "message_id"), stub, tmp_path)
            assert first.returncode == second.returncode == 0, first.stderr
            assert stub.billed_total == 3  # the rerun found every message_id judged already

    def test_a_key_the_answers_lack_is_one_line(self, oa_inputs, tmp_path):
        with StubServer() as stub:
            result = run(review_command(oa_inputs, "-id", "question_id"), stub, tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"{oa_inputs['a']}:1: missing field(s) question_id" in result.stderr.strip().splitlines()[-1]

    @pytest.mark.skipif(not REFERENCE_EVAL.is_dir(), reason="needs ../shared/reference")
    def test_released_questions_and_chatgpt_generations(self, inputs, tmp_path):
        questions = [json.loads(line) for line in (REFERENCE_EVAL / "prompts" / "oa_questions.jsonl").open()][:4]
        inputs["q"] = write_jsonl(tmp_path / "oa_questions.jsonl", questions)
        inputs["a"] = write_jsonl(tmp_path / "guanaco-oa.jsonl",
                                  [{"message_id": q["message_id"], "generation": "Fine."} for q in questions])
        inputs["b"] = REFERENCE_EVAL / "generations" / "oa" / "gpt-3.5-oa-generations.jsonl"
        with StubServer() as stub:
            result = run(review_command(inputs), stub, tmp_path)
        assert result.returncode == 0, result.stderr
        rows = read_rows(output_file(inputs))
        assert sorted(r["message_id"] for r in rows) == sorted(q["message_id"] for q in questions)


class TestReferenceCommandLines:
    def test_more_than_two_answer_files_judges_the_first_two(self, inputs, tmp_path):
        extra = write_jsonl(tmp_path / "model_c.jsonl", [{"answer_id": "c1", "question_id": 1, "text": "C."}])
        command = review_command(inputs)
        command.insert(command.index(str(inputs["b"])) + 1, str(extra))
        with StubServer() as stub:
            result = run(command, stub, tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"note: judging the first two answer files; ignoring {extra}" in result.stderr
        assert {(r["answer1_model"], r["answer2_model"]) for r in read_rows(output_file(inputs))} == {("model-a", "model-b")}

    def test_oa_prompt_file_with_the_three_reviewer_file(self, oa_inputs, tmp_path):
        # The reference's OA command pairs its one-prompt OA file with the Vicuna reviewer file,
        # whose coding and math reviewers name prompts the OA file lacks; no OA question uses them.
        write_jsonl(oa_inputs["p"], [row for row in read_rows(oa_inputs["p"]) if row["prompt_id"] == 1])
        write_jsonl(oa_inputs["r"], [{"reviewer_id": f"r{i}", "prompt_id": i, "category": c, "metadata": {}}
                                     for i, c in [(1, "general"), (2, "coding"), (3, "math")]])
        with StubServer() as stub:
            result = run(review_command(oa_inputs), stub, tmp_path)
        assert result.returncode == 0, result.stderr
        assert stub.billed_total == 3

    def test_reference_abbreviations_keep_their_meaning(self, inputs, tmp_path):
        with StubServer() as stub:
            result = run(review_command(inputs, "--mo", "judge-x", "--max", "77"), stub, tmp_path)
        assert result.returncode == 0, result.stderr
        assert {body["model"] for body in stub.bodies} == {"judge-x"}
        assert {body["max_tokens"] for body in stub.bodies} == {77}

    def test_ambiguous_abbreviation_names_the_full_flags(self, inputs, tmp_path):
        with StubServer() as stub:
            result = run(review_command(inputs, "--m", "x"), stub, tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "--model" in result.stderr and "--max-tokens" in result.stderr and stub.requests == 0

    def test_qa_baseline_reference_abbreviations(self, inputs, tmp_path):
        out = tmp_path / "answer_stub.jsonl"
        command = [sys.executable, str(EVAL_DIR / "qa_baseline_gpt.py"), "--q", str(inputs["q"]), "--o", str(out),
                   "--max", "33", "-m", "stub-model"]
        with StubServer() as stub:
            result = run(command, stub, tmp_path)
        assert result.returncode == 0, result.stderr
        assert {body["max_tokens"] for body in stub.bodies} == {33} and len(read_rows(out)) == 5


def parse_a_or_b(text):
    """The toy kind's parser: the reply's last line, "A" or "B", else "?"."""
    last = text.strip().splitlines()[-1].strip() if text.strip() else ""
    return last if last in ("A", "B") else "?"


class TestANewVerdictKind:
    """A verdict kind is one registry entry: with it, the judge asks for it, parses it, names its
    files, and the Elo command scores it by its own outcome rule."""

    def test_one_entry_runs_from_judge_to_elo_table(self, inputs, tmp_path, monkeypatch, capsys):
        from judgekit import naming, verdicts
        from judgekit.commands import elo as elo_command
        from judgekit.commands import review
        from qlorakit.errors import run_main

        prompt_file = write_jsonl(tmp_path / "toy_prompts.jsonl", [
            {"prompt_id": i, "category": c, "system_prompt": "Pick A or B.", "description": "toy",
             "prompt_template": "Q {question}\nA: {answer_1}\nB: {answer_2}\n{prompt}",
             "defaults": {"prompt": "Last line: A or B."}} for i, c in [(1, "general"), (2, "coding")]])
        toy = verdicts.VerdictKind(name="a_or_b", description="last line A or B", prompt_file=str(prompt_file),
                                   parse=parse_a_or_b, outcome={"A": 1.0, "B": 0.0}.get, file_tail="a_or_b")
        monkeypatch.setitem(verdicts.KINDS, toy.name, toy)  # the one entry

        def reply(messages):  # A wins questions 1-3, B question 4, no verdict for question 5
            number = int(messages[1]["content"].split("Question number ")[1][0])
            return "Reasons.\n" + {5: "cannot tell"}.get(number, "A" if number <= 3 else "B")

        for name in [name for name in os.environ if name.startswith("OPENAI_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        out_dir = tmp_path / "reviews"
        with StubServer(reply=reply) as stub:
            monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
            status = run_main(review.main, ["-q", str(inputs["q"]), "-a", str(inputs["a"]), str(inputs["b"]),
                                            "-r", str(inputs["r"]), "-o", f"{out_dir}{os.sep}", "--verdict", "a_or_b"])
        assert status == 0
        assert {body["messages"][0]["content"] for body in stub.bodies} == {"Pick A or B."}  # the entry's prompt
        (path,) = out_dir.glob("*.jsonl")
        assert path.name == "model-a-vs-model-b-gpt-4-reviewer-a_or_b.jsonl"
        assert naming.split_review_filename(path) == ("model-a", "model-b")
        rows = sorted(read_rows(path), key=lambda row: row["question_id"])
        assert [(row["score"], row["verdict"]) for row in rows] == [
            ("A", "a_or_b"), ("A", "a_or_b"), ("A", "a_or_b"), ("B", "a_or_b"), ("?", "a_or_b")]
        capsys.readouterr()

        assert run_main(elo_command.main, [str(out_dir), "--orderings", "20", "--json"]) == 0
        captured = capsys.readouterr()
        table = json.loads(captured.out)
        assert [(r["model"], r["wins"], r["losses"], r["ties"]) for r in table] == [
            ("model-a", 3, 1, 0), ("model-b", 1, 3, 0)]
        assert "5 judgments from 1 files, 1 skipped" in captured.err

        with pytest.raises(SystemExit):
            review.parse_args(["--help"])
        assert "a_or_b: last line A or B" in capsys.readouterr().out  # --verdict's help lists the entry
