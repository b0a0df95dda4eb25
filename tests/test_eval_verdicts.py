"""judgekit.verdicts: both verdict shapes; an unparsable reply is never a score."""


import pytest


from judgekit import verdicts


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


def test_unparsable_sentinels_are_not_parsed_scores():
    assert not verdicts.is_parsed(-1) and not verdicts.is_parsed([-1, -1]) and not verdicts.is_parsed([8, -1])
    assert verdicts.is_parsed(3) and verdicts.is_parsed([0.0, 10.0])


def test_kind_from_prompt_file_name():
    assert verdicts.infer_verdict_kind("prompts/vicuna_prompt_threeclass.jsonl") == verdicts.THREECLASS
    assert verdicts.infer_verdict_kind("prompts/vicuna_prompt_relative.jsonl") == verdicts.SCORES
    with pytest.raises(ValueError):
        verdicts.parse_verdict("1", "fiveclass")
