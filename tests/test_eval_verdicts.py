"""judgekit.verdicts: both shipped verdict kinds; an unparsable reply is never a score."""

import dataclasses

import pytest

from judgekit import verdicts
from judgekit.errors import InputError


class TestParseThreeclass:
    @pytest.mark.parametrize("text, expected", [
        ("Long explanation.\n\n1", 1),
        ("Explanation\n2\n", 2),
        ("Equal.\n**3**", 3),
        ("Both good.\n3.", 3),
        ("I prefer Assistant 2.", -1),  # no final class line
        ("Explanation\n4", -1),
        ("", -1),
        ("1 and 2 are close\nthus", -1),
    ])
    def test_cases(self, text, expected):
        assert verdicts.parse_threeclass(text) == expected


class TestParseScorePair:
    @pytest.mark.parametrize("text, expected", [
        ("8 6\nwhy", [8.0, 6.0]),
        ("9, 8.5\nwhy", [9.0, 8.5]),
        ("  7,6  ", [7.0, 6.0]),
        ("8/10 7/10\nwhy", [8.0, 7.0]),
        ("Assistant 1: 8\nAssistant 2: 6", [-1, -1]),
        ("8 6 5", [-1, -1]),
        ("11 6", [-1, -1]),
        ("", [-1, -1]),
    ])
    def test_cases(self, text, expected):
        assert verdicts.parse_score_pair(text) == expected


def outcome(kind, score):
    return verdicts.get_kind(kind).outcome(score)


def test_unparsable_sentinels_are_no_game():
    assert outcome("threeclass", -1) is None and outcome("scores", [-1, -1]) is None
    assert outcome("scores", [8, -1]) is None
    assert outcome("threeclass", 3) == 0.5 and outcome("scores", [0.0, 10.0]) == 0.0


def test_the_kind_decides_not_the_score_type():
    # A score pair of ints (as in some of the reference's relative files) is a pair; a bare
    # number in a score-pair row is no pair, and a pair in a three-class row no class.
    assert outcome("scores", [8, 6]) == 1.0 and outcome("scores", [6, 6]) == 0.5
    assert outcome("scores", 2) is None and outcome("threeclass", [8, 6]) is None


def test_kind_from_prompt_file_name(monkeypatch):
    assert verdicts.infer_verdict_kind("prompts/vicuna_prompt_threeclass.jsonl") == verdicts.THREECLASS
    assert verdicts.infer_verdict_kind("prompts/vicuna_prompt_relative.jsonl") == verdicts.SCORES
    assert verdicts.infer_verdict_kind("threeclass/vicuna_prompt_relative.jsonl") == verdicts.SCORES  # the name only
    toy = dataclasses.replace(verdicts.KINDS["threeclass"], name="a_or_b")
    monkeypatch.setitem(verdicts.KINDS, toy.name, toy)
    assert verdicts.infer_verdict_kind("prompts/judge_a_or_b.jsonl") == "a_or_b"  # any registered kind


def test_unknown_kind_is_bad_input():
    with pytest.raises(InputError, match="unknown verdict kind 'fiveclass'; known: threeclass, scores"):
        verdicts.get_kind("fiveclass")
