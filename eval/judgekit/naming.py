"""Model names from review file names. Pure.

Review files are named ``<A>-vs-<B>-<judge>-reviewer[-threeclass].jsonl`` (the reference's
convention; ``_vs_`` also accepted). Model names may contain hyphens, and so may the judge
("gpt-4"), so the judge's name is given rather than guessed: strip the known
``-<judge>-reviewer[-threeclass]`` tail, then split what is left at its single ``-vs-``.
"""

import os
import re

from .errors import InputError

SEPARATORS = ("-vs-", "_vs_")
DEFAULT_JUDGE = "gpt-4"


def safe_name(name):
    """A model or judge name made safe for a file name ("org/model" -> "org_model")."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(name))


def review_filename(model_a, model_b, judge, threeclass):
    """The file name eval_gpt_review.py writes into an output directory.

    >>> review_filename("guanaco-7b", "answer-gpt35", "gpt-4", True)
    'guanaco-7b-vs-answer-gpt35-gpt-4-reviewer-threeclass.jsonl'
    """
    tail = "-threeclass" if threeclass else ""
    return f"{safe_name(model_a)}-vs-{safe_name(model_b)}-{safe_name(judge)}-reviewer{tail}.jsonl"


def split_review_filename(path, judge=DEFAULT_JUDGE):
    """``(A, B)`` from a review file name (hyphen or underscore spelling of the tail).

    >>> split_review_filename("x/13b-guanaco-vs-answer-bard-gpt-4-reviewer-threeclass.jsonl")
    ('13b-guanaco', 'answer-bard')
    >>> split_review_filename("gpt-3.5-vs-gpt4-gpt4-reviewer.jsonl", judge="gpt4")
    ('gpt-3.5', 'gpt4')
    >>> split_review_filename("a_vs_b_gpt-4_reviewer_threeclass.jsonl")
    ('a', 'b')
    """
    stem = os.path.basename(str(path))
    for suffix in (".jsonl", ".json"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    tail = re.compile(rf"[-_]{re.escape(safe_name(judge))}[-_]reviewer(?:[-_]threeclass)?$")
    match = tail.search(stem)
    if not match:
        raise InputError(
            f"{path}: file name does not end with '-{judge}-reviewer[-threeclass].jsonl'; "
            f"pass the judge's name as it appears there with --judge (e.g. --judge gpt4)"
        )
    pair = stem[: match.start()]
    hits = [(pair.find(sep), sep) for sep in SEPARATORS if sep in pair]
    if sum(pair.count(sep) for sep in SEPARATORS) != 1:
        raise InputError(
            f"{path}: cannot split '{pair}' into two model names at exactly one '-vs-' or '_vs_'"
        )
    position, sep = hits[0]
    return pair[:position], pair[position + len(sep):]
