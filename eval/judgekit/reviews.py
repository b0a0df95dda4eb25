"""Review rows -> judgments: who was answer 1, who was answer 2, and the verdict (score and kind).

A row's verdict kind is its ``verdict`` field (written by eval_gpt_review.py; one of
``verdicts.KINDS``, else the file is refused), so a file may mix kinds; rows without the field
(the reference's files) get the kind their score's shape implies (``verdicts.kind_of_score``).

Model names come from the row's own ``answer1_model``/``answer2_model`` fields (written by
eval_gpt_review.py) when present, else from the file name (``naming``). Optionally, answer
files given as ``NAME=FILE`` correct file-name orientation by ``answer1_id``/``answer2_id``:
the reference's relative-gpt-3.5 files about generations carry ChatGPT as answer 1 in files
named ``<generation>-vs-gpt-3.5``.

A row's question is identified by ``id_key`` when given, else by the first of
``qlorakit.questions.ID_KEYS`` the file's rows carry (``message_id`` in the OpenAssistant benchmark's files).
"""

import dataclasses
import json
import logging

from qlorakit.jsonl import read_jsonl
from qlorakit.questions import detect_id_key

from .errors import InputError
from .naming import DEFAULT_JUDGE, split_review_filename
from .records import load_answers
from .verdicts import get_kind, kind_of_score

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Judgment:
    question_id: object
    model1: str  # the model whose answer was shown first
    model2: str
    score: object  # as the verdict kind's parser wrote it, e.g. 1 (threeclass), [8, 6] (scores), or a sentinel
    source: str = ""
    verdict: str | None = None  # the kind (verdicts.KINDS) whose outcome rule scores it; None: from the score's shape

    def __post_init__(self):
        if self.verdict is None:
            object.__setattr__(self, "verdict", kind_of_score(self.score))


@dataclasses.dataclass
class LoadStats:
    rows: int = 0
    reoriented: int = 0
    duplicates: int = 0  # rows read before (a file named twice, or copied into another)
    files_by_id_key: dict = dataclasses.field(default_factory=dict)  # {"message_id": 1, ...}


def parse_answer_owner_specs(specs, id_key=None, id_flag=None):
    """``["gpt-3.5=path/answer_gpt35.jsonl", ...]`` -> ``{answer_id: "gpt-3.5"}``."""
    owners = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--answers expects NAME=FILE, got {spec!r}")
        for answer in load_answers(path, model=name, id_key=id_key, id_flag=id_flag).values():
            owners[answer.answer_id] = name
    return owners


def _orient(row, file_pair, owners):
    """``(model1, model2, swapped)`` for a row whose models come from its file name."""
    model1, model2 = file_pair
    owner1, owner2 = owners.get(row.get("answer1_id")), owners.get(row.get("answer2_id"))
    if (owner1 == model2 and owner1 != model1) or (owner2 == model1 and owner2 != model2):
        return model2, model1, True
    return model1, model2, False


def row_verdict(row, path, number):
    """The kind named by a row's ``verdict`` field, None when it has none; refused if unknown."""
    if "verdict" not in row:
        return None
    try:
        return get_kind(row["verdict"]).name
    except InputError as err:
        raise InputError(f"{path}:{number}: {err}") from None


def load_judgments(paths, judge=DEFAULT_JUDGE, owners=None, stats=None, id_key=None, id_flag=None):
    """All judgments of the review files, in file order (``id_flag``: see ``qlorakit.questions.detect_id_key``)."""
    owners = owners or {}
    stats = stats if stats is not None else LoadStats()
    judgments, seen = [], set()
    for path in paths:
        file_pair = None
        rows = list(read_jsonl(path, tolerate_torn_tail=True))
        file_key = detect_id_key({path: rows}, id_key, id_flag)
        stats.files_by_id_key[file_key] = stats.files_by_id_key.get(file_key, 0) + 1
        for number, row in rows:
            if "score" not in row:
                raise InputError(f"{path}:{number}: a review row needs 'score'")
            identity = row.get("review_id") or json.dumps(row, sort_keys=True)
            if identity in seen:
                stats.duplicates += 1
                continue
            seen.add(identity)
            if row.get("answer1_model") and row.get("answer2_model"):
                model1, model2 = row["answer1_model"], row["answer2_model"]
            else:
                file_pair = file_pair or split_review_filename(path, judge)
                model1, model2, swapped = _orient(row, file_pair, owners)
                stats.reoriented += swapped
            judgments.append(Judgment(row[file_key], model1, model2, row["score"], str(path),
                                      row_verdict(row, path, number)))
            stats.rows += 1
    logger.info("questions identified by %s", ", ".join(f"{key} ({count} file{'s' * (count > 1)})"
                                                        for key, count in stats.files_by_id_key.items()))
    if stats.duplicates:
        logger.warning("%d review rows read twice (the same review_id: a file named twice or copied) are counted "
                       "once", stats.duplicates)
    if stats.reoriented:
        logger.info("%d rows oriented by their answer ids rather than their file names", stats.reoriented)
    return judgments
