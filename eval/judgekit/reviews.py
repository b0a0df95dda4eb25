"""Review rows -> judgments: who was answer 1, who was answer 2, and the verdict.

Model names come from the row's own ``answer1_model``/``answer2_model`` fields (written by
eval_gpt_review.py) when present, else from the file name (``naming``). Optionally, answer
files given as ``NAME=FILE`` correct file-name orientation by ``answer1_id``/``answer2_id``:
the reference's relative-gpt-3.5 files about generations carry ChatGPT as answer 1 in files
named ``<generation>-vs-gpt-3.5`` (see ../shared/README.md).
"""

import dataclasses
import logging

from .errors import InputError
from .naming import DEFAULT_JUDGE, split_review_filename
from .records import load_answers, read_jsonl

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Judgment:
    question_id: object
    model1: str  # the model whose answer was shown first
    model2: str
    score: object  # int class (threeclass) or [s1, s2] (scores); sentinels when unparsable
    source: str = ""


@dataclasses.dataclass
class LoadStats:
    rows: int = 0
    reoriented: int = 0


def parse_answer_owner_specs(specs):
    """``["gpt-3.5=path/answer_gpt35.jsonl", ...]`` -> ``{answer_id: "gpt-3.5"}``."""
    owners = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--answers expects NAME=FILE, got {spec!r}")
        for answer in load_answers(path, model=name).values():
            owners[answer.answer_id] = name
    return owners


def _orient(row, file_pair, owners):
    """``(model1, model2, swapped)`` for a row whose models come from its file name."""
    model1, model2 = file_pair
    owner1, owner2 = owners.get(row.get("answer1_id")), owners.get(row.get("answer2_id"))
    if (owner1 == model2 and owner1 != model1) or (owner2 == model1 and owner2 != model2):
        return model2, model1, True
    return model1, model2, False


def load_judgments(paths, judge=DEFAULT_JUDGE, owners=None, stats=None):
    """All judgments of the review files, in file order."""
    owners = owners or {}
    stats = stats if stats is not None else LoadStats()
    judgments = []
    for path in paths:
        file_pair = None
        for number, row in read_jsonl(path, tolerate_torn_tail=True):
            if not isinstance(row, dict) or "score" not in row or "question_id" not in row:
                raise InputError(f"{path}:{number}: a review row needs 'question_id' and 'score'")
            if row.get("answer1_model") and row.get("answer2_model"):
                model1, model2 = row["answer1_model"], row["answer2_model"]
            else:
                file_pair = file_pair or split_review_filename(path, judge)
                model1, model2, swapped = _orient(row, file_pair, owners)
                stats.reoriented += swapped
            judgments.append(Judgment(row["question_id"], model1, model2, row["score"], str(path)))
            stats.rows += 1
    if stats.reoriented:
        logger.info("%d rows oriented by their answer ids rather than their file names", stats.reoriented)
    return judgments
