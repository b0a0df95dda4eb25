"""Model names from review file names. Pure.

Review files are named ``<A>-vs-<B>-<judge>-reviewer[-<tail>].jsonl`` (the reference's
convention; ``_vs_`` also accepted), the tail being the verdict kind's ``file_tail``
(``-threeclass`` for three-class verdicts, none for score pairs; see ``verdicts.KINDS``). Model
names may contain hyphens, and so may the judge ("gpt-4"), so the judge's name is given rather
than guessed: strip the known ``-<judge>-reviewer[-<tail>]`` ending, then split what is left at
its single ``-vs-``.
"""

import os
import re

from .errors import InputError
from .verdicts import KINDS, get_kind

SEPARATORS = ("-vs-", "_vs_")
DEFAULT_JUDGE = "gpt-4"


def safe_name(name):
    """A model or judge name made safe for a file name ("org/model" -> "org_model")."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(name))


def _tails():
    """The registered kinds' file-name tails, longest first (so that none hides a longer one)."""
    return sorted({kind.file_tail for kind in KINDS.values() if kind.file_tail}, key=len, reverse=True)


def review_filename_shape(judge="<judge>"):
    """How review files are named, for help texts and messages.

    >>> review_filename_shape()
    '<A>-vs-<B>-<judge>-reviewer[-threeclass].jsonl'
    """
    return f"<A>-vs-<B>-{judge}-reviewer[{'|'.join('-' + tail for tail in _tails())}].jsonl"


def review_filename(model_a, model_b, judge, kind):
    """The file name eval_gpt_review.py writes into an output directory for verdicts of ``kind``.

    >>> review_filename("guanaco-7b", "answer-gpt35", "gpt-4", "threeclass")
    'guanaco-7b-vs-answer-gpt35-gpt-4-reviewer-threeclass.jsonl'
    >>> review_filename("guanaco-7b", "gpt-3.5", "gpt4", "scores")
    'guanaco-7b-vs-gpt-3.5-gpt4-reviewer.jsonl'
    """
    tail = get_kind(kind).file_tail
    return f"{safe_name(model_a)}-vs-{safe_name(model_b)}-{safe_name(judge)}-reviewer{'-' * bool(tail)}{tail}.jsonl"


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
    kind_tail = "|".join(re.escape(tail) for tail in _tails())
    ending = re.compile(rf"[-_]{re.escape(safe_name(judge))}[-_]reviewer(?:[-_](?:{kind_tail}))?$")
    match = ending.search(stem)
    if not match:
        raise InputError(
            f"{path}: file name does not end as in '{review_filename_shape(judge)}'; "
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
