"""Turn a judge's reply into a score. Pure functions.

Two verdict shapes (QLoRA paper, section 5 and appendix):

- ``threeclass``: the reply ends with a line holding 1 (answer 1 better), 2 (answer 2 better)
  or 3 (tie). Score is that int, or ``UNPARSABLE_CLASS`` (-1).
- ``scores``: the reply's first line holds two numbers, the 1-10 scores of answer 1 and 2
  ("8 6", "8, 6", "8.5/10 7"). Score is ``[s1, s2]`` as floats, or ``UNPARSABLE_SCORES``.

An unparsable reply is recorded with the sentinel so that it is visible and countable, and is
never mistaken for a score: every consumer skips the sentinel.
"""

import re

THREECLASS = "threeclass"
SCORES = "scores"
VERDICT_KINDS = (THREECLASS, SCORES)

UNPARSABLE_CLASS = -1
UNPARSABLE_SCORES = [-1, -1]

_NUMBER = r"(\d+(?:\.\d+)?)"
# Two numbers, each optionally "/10", separated by spaces, a comma or both.
_SCORE_PAIR = re.compile(rf"^\s*{_NUMBER}(?:\s*/\s*10)?\s*(?:,\s*|\s+){_NUMBER}(?:\s*/\s*10)?\s*$")
_CLASS_LINE = re.compile(r"^\W*([123])\W*$")


def parse_threeclass(text):
    """The class (1, 2 or 3) on the last non-empty line, else -1.

    >>> parse_threeclass("Assistant 1 was more precise.\\n\\n1")
    1
    >>> parse_threeclass("Both fine.\\n**3**")
    3
    >>> parse_threeclass("I prefer answer 2.")
    -1
    """
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return UNPARSABLE_CLASS
    match = _CLASS_LINE.match(lines[-1].strip())
    return int(match.group(1)) if match else UNPARSABLE_CLASS


def parse_score_pair(text):
    """The two scores on the first non-empty line, else ``[-1, -1]``.

    >>> parse_score_pair("8 6\\nAnswer 1 is more complete.")
    [8.0, 6.0]
    >>> parse_score_pair("9, 8.5")
    [9.0, 8.5]
    >>> parse_score_pair("Scores: good and bad")
    [-1, -1]
    """
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return list(UNPARSABLE_SCORES)
    match = _SCORE_PAIR.match(lines[0])
    if not match:
        return list(UNPARSABLE_SCORES)
    scores = [float(match.group(1)), float(match.group(2))]
    if not all(0 <= score <= 10 for score in scores):
        return list(UNPARSABLE_SCORES)
    return scores


def parse_verdict(text, kind):
    """Dispatch on the verdict kind (``threeclass`` or ``scores``)."""
    if kind == THREECLASS:
        return parse_threeclass(text)
    if kind == SCORES:
        return parse_score_pair(text)
    raise ValueError(f"unknown verdict kind {kind!r}; expected one of {VERDICT_KINDS}")


def is_parsed(score):
    """False for the unparsable sentinels of either shape."""
    if isinstance(score, (list, tuple)):
        return len(score) == 2 and all(value >= 0 for value in score)
    return score in (1, 2, 3)


def infer_verdict_kind(prompt_path):
    """The verdict shape a prompt file asks for, from its name (the reference's files and ours
    are named ``*threeclass*`` for the three-class pairwise prompt)."""
    return THREECLASS if "threeclass" in str(prompt_path).lower() else SCORES
