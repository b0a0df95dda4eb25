"""Every error an eval command prints names only flags that command accepts.

Each command is run in-process on bad input; the parser it builds is captured, and every
flag-like word of its error line must be one of that parser's options. New commands or new bad
inputs are one entry in ``SCENARIOS``.
"""

import argparse
import json
import re

import pytest

from judgekit.commands import elo, qa_baseline, relative_score, review
from qlorakit.cli import generate
from qlorakit.errors import run_main

FLAG = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def files(tmp_path):
    return {
        "no_ids": write_jsonl(tmp_path / "no_ids.jsonl", [{"text": "What is 2+2?"}]),
        "questions": write_jsonl(tmp_path / "questions.jsonl", [{"question_id": 1, "text": "Q?"}]),
        "answers": write_jsonl(tmp_path / "model_b.jsonl", [{"question_id": 1, "text": "B."}]),
        "reviews_no_ids": write_jsonl(tmp_path / "a-vs-b-gpt-4-reviewer.jsonl", [{"score": [1, 2]}]),
        "out": str(tmp_path / "out.jsonl"),
    }


# (command name, its main, argv built from ``files``) for bad input of each kind.
SCENARIOS = [
    ("generate", generate.main, lambda f: ["--model", "unused", "-q", f["no_ids"], "-o", f["out"]]),
    ("generate", generate.main, lambda f: ["--model", "unused", "-q", f["questions"], "-o", f["out"],
                                           "--batch-size", "0"]),
    ("judge", review.main, lambda f: ["-q", f["no_ids"], "-a", f["answers"], f["answers"], "-o", f["out"]]),
    ("judge", review.main, lambda f: ["-q", f["questions"], "-a", f["no_ids"], f["answers"], "-o", f["out"]]),
    ("judge", review.main, lambda f: ["-q", f["questions"], "-a", f["answers"]]),
    ("qa-baseline", qa_baseline.main, lambda f: ["-q", f["no_ids"], "-o", f["out"]]),
    ("elo", elo.main, lambda f: [f["reviews_no_ids"]]),
    ("elo", elo.main, lambda f: [f["reviews_no_ids"], "--orderings", "0"]),
    ("relative-score", relative_score.main, lambda f: [f["reviews_no_ids"], "--reference", "a"]),
]


def run_capturing_parsers(main, argv, monkeypatch, capsys):
    """``(exit status, stderr, options of every parser the command built)``."""
    parsers = []
    original = argparse.ArgumentParser.parse_known_args

    def recording(self, *args, **kwargs):
        parsers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", recording)
    try:
        status = run_main(main, argv)
    except SystemExit as exit_:  # argparse's own usage errors
        status = exit_.code
    options = {flag for parser in parsers for flag in parser._option_string_actions}
    return status, capsys.readouterr().err, options


@pytest.mark.parametrize("name, main, make_argv", SCENARIOS, ids=[f"{s[0]}-{i}" for i, s in enumerate(SCENARIOS)])
def test_error_hints_name_only_flags_of_the_same_command(name, main, make_argv, files, monkeypatch, capsys):
    status, stderr, options = run_capturing_parsers(main, make_argv(files), monkeypatch, capsys)
    assert status == 2, stderr  # the input really was refused
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert errors, stderr
    for line in errors:
        named = {flag for flag in FLAG.findall(line.split("error:", 1)[1])}
        assert named <= options, f"{name}: {line!r} names {sorted(named - options)}, not flags of this command"
