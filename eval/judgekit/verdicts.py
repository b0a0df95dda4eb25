"""Verdict kinds: how a judge's reply becomes a score, and a score a game. Pure.

Every kind is one ``VerdictKind`` entry of ``KINDS``, and everything that depends on the kind
reads it from there: the judge command (``--verdict`` choices and help, the packaged prompt it
sends, the parser of the reply, the ``verdict`` field of the rows it writes, the file name),
``naming`` (the file-name tail), ``reviews`` (the row's kind) and ``elo`` / ``bradley_terry``
(the outcome rule). To add a kind, add one entry here (with its parser and outcome rule) and
put its prompt file in prompt_files/.

Two kinds ship (QLoRA paper, section 5 and appendix):

- ``threeclass``: the reply ends with a line holding 1 (answer 1 better), 2 (answer 2 better)
  or 3 (tie). Score is that int, or ``UNPARSABLE_CLASS`` (-1).
- ``scores``: the reply's first line holds two numbers, the 1-10 scores of answer 1 and 2
  ("8 6", "8, 6", "8.5/10 7"). Score is ``[s1, s2]`` as floats, or ``UNPARSABLE_SCORES``.

An unparsable reply is recorded with its kind's sentinel so that it is visible and countable,
and is never mistaken for a score: its outcome is no game, and every consumer skips and counts it.
"""

import dataclasses
import numbers
import os
import re
from typing import Callable

from .errors import InputError

THREECLASS = "threeclass"
SCORES = "scores"
DEFAULT_KIND = THREECLASS  # what the judge asks for when neither --verdict nor -p says
UNNAMED_PROMPT_KIND = SCORES  # a -p file whose name holds no kind (the reference's *_relative* prompts)

UNPARSABLE_CLASS = -1
UNPARSABLE_SCORES = [-1, -1]

_NUMBER = r"(\d+(?:\.\d+)?)"
# Two numbers, each optionally "/10", separated by spaces, a comma or both.
_SCORE_PAIR = re.compile(rf"^\s*{_NUMBER}(?:\s*/\s*10)?\s*(?:,\s*|\s+){_NUMBER}(?:\s*/\s*10)?\s*$")
_CLASS_LINE = re.compile(r"^\W*([123])\W*$")
_CLASS_POINTS = {1: 1.0, 2: 0.0, 3: 0.5}


@dataclasses.dataclass(frozen=True)
class VerdictKind:
    """One verdict kind: everything the judge, the file names and the scorers need to know."""

    name: str  # the --verdict value, and the "verdict" field of every row the judge writes
    description: str  # the reply it asks for, in --verdict's help
    prompt_file: str  # the prompt asking for it when -p is not given: a name in prompt_files/ (or a full path)
    parse: Callable  # reply text -> score, or the kind's unparsable sentinel
    outcome: Callable  # score -> points of the answer shown first (1 win, 0.5 tie, 0 loss); None: no game
    file_tail: str  # review files are named <A>-vs-<B>-<judge>-reviewer[-<file_tail>].jsonl ("": no tail)


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


def threeclass_outcome(score):
    """1 -> 1.0, 2 -> 0.0, 3 -> 0.5; anything else (the sentinel, a pair) is no game.

    >>> [threeclass_outcome(score) for score in (1, 2, 3, -1, [8, 6])]
    [1.0, 0.0, 0.5, None, None]
    """
    return _CLASS_POINTS.get(score) if isinstance(score, numbers.Real) else None


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


def score_pair(score):
    """``(s1, s2)`` of a score-pair verdict (ints or floats), else None (the sentinel, a class).

    >>> score_pair([8, 6]), score_pair([-1, -1]), score_pair(2)
    ((8, 6), None, None)
    """
    if isinstance(score, (list, tuple)) and len(score) == 2 and all(
            isinstance(value, numbers.Real) and value >= 0 for value in score):
        return tuple(score)
    return None


def score_pair_outcome(score):
    """The higher score wins, equal scores tie; no game unless the score is a pair.

    >>> [score_pair_outcome(score) for score in ([8, 6], [6.5, 7], [7, 7], [-1, -1], 2)]
    [1.0, 0.0, 0.5, None, None]
    """
    pair = score_pair(score)
    if pair is None:
        return None
    first, second = pair
    return 1.0 if first > second else 0.0 if first < second else 0.5


KINDS = {kind.name: kind for kind in (
    VerdictKind(name=THREECLASS, description="last line 1 or 2 (the better answer) or 3 (tie)",
                prompt_file="judge_prompt_threeclass.jsonl", parse=parse_threeclass,
                outcome=threeclass_outcome, file_tail="threeclass"),
    VerdictKind(name=SCORES, description='first line two 1-10 scores, "8 6"',
                prompt_file="judge_prompt_relative.jsonl", parse=parse_score_pair,
                outcome=score_pair_outcome, file_tail=""),
)}


def get_kind(name):
    """The registered kind of that name; bad input otherwise (a flag or a row naming no kind)."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown verdict kind {name!r}; known: {', '.join(KINDS)}") from None


def kind_of_score(score):
    """The kind a score's shape implies, for rows written without a ``verdict`` field (the
    reference's files): a list of two is a score pair, anything else a three-class verdict."""
    return SCORES if isinstance(score, (list, tuple)) else THREECLASS


def infer_verdict_kind(prompt_path):
    """The kind a prompt file asks for, from its name: the first kind named in it (the
    reference's files and ours are named ``*threeclass*`` for the three-class prompt), else
    ``UNNAMED_PROMPT_KIND``."""
    name = os.path.basename(str(prompt_path)).lower()
    return next((kind for kind in KINDS if kind.lower() in name), UNNAMED_PROMPT_KIND)
