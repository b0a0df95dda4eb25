"""eval/download_benchmarks.py with the network replaced: a loopback file server for the Vicuna
questions and a fake rows API for OpenAssistant."""

import functools
import http.server
import json
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

EVAL_DIR = Path(__file__).resolve().parent.parent / "eval"

from judgekit.commands import download_benchmarks


@pytest.fixture
def file_server(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_vicuna_questions_through_the_cli(tmp_path, file_server):
    rows = [{"question_id": 1, "text": "How do tides work?", "category": "knowledge"},
            {"question_id": 2, "category": "math", "turns": ["What is 3 * 7?"]}]
    (tmp_path / "question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, str(EVAL_DIR / "download_benchmarks.py"), "--out-dir", str(out),
                             "--only", "vicuna", "--vicuna-url", f"{file_server}/question.jsonl"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    written = [json.loads(line) for line in (out / "vicuna_questions.jsonl").read_text().splitlines()]
    assert written == [{"question_id": 1, "text": "How do tides work?", "category": "knowledge"},
                       {"question_id": 2, "text": "What is 3 * 7?", "category": "math"}]


def test_unreachable_source_is_one_line(tmp_path, file_server):
    result = subprocess.run([sys.executable, str(EVAL_DIR / "download_benchmarks.py"), "--out-dir", str(tmp_path),
                             "--only", "vicuna", "--vicuna-url", f"{file_server}/missing.jsonl"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: could not fetch")


def message(mid, role, text, parent=None, rank=None):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank, "lang": "en",
            "deleted": False}


MESSAGES = [
    message("p1", "prompter", "Name a colour."),
    message("a1", "assistant", "Blue.", "p1", rank=1),
    message("a2", "assistant", "Red.", "p1", rank=0),
    message("p2", "prompter", "Another?", "a2"),
    message("a3", "assistant", "Green.", "p2", rank=0),
    message("p3", "prompter", "Unanswered?", "a1"),
    message("a4", "assistant", "Unranked.", "p3"),
]


def test_oasst_pages_and_conversations(monkeypatch):
    seen = []

    def fake_fetch(url, timeout=60):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
        offset, length = int(query["offset"][0]), int(query["length"][0])
        seen.append((query["split"][0], offset))
        page = [{"row_idx": i, "row": m} for i, m in enumerate(MESSAGES[offset:offset + length], start=offset)]
        return json.dumps({"rows": page, "num_rows_total": len(MESSAGES)}).encode()

    monkeypatch.setattr(download_benchmarks, "fetch", fake_fetch)
    monkeypatch.setattr(download_benchmarks, "PAGE_SIZE", 3)
    questions = download_benchmarks.convert_oasst(download_benchmarks.fetch_oasst_messages())
    assert seen == [("validation", 0), ("validation", 3), ("validation", 6)]
    assert [(q["question_id"], q["text"], q["output"]) for q in questions] == [
        ("a2", "### Human: Name a colour. ### Assistant:", "Red."),
        ("a3", "### Human: Name a colour. ### Assistant: Red. ### Human: Another? ### Assistant:", "Green."),
    ]
    assert all(q["category"] == "generic" and q["input"] == q["text"] for q in questions)
