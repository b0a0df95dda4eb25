"""Read answers in every shape the QLoRA release uses (questions: qlorakit.questions; rows are
written by qlorakit.jsonl, so that a crash loses at most the row being written).

Shapes read (those of the QLoRA release's eval/ folder):

- answers: ``{"answer_id", "question_id", "text"}`` or the generation format
  ``{"question_id", "text" (the question!), "prompt", "generation", "generation_truncated"}``.

The OpenAssistant benchmark's files key rows by ``message_id`` instead (its questions carry
both, with equal values). Every reader takes the key as ``id_key``; left out, it is found in
the file (``ID_KEYS``, in that order). ``Question.question_id`` / ``Answer.question_id`` hold the
value of whichever key was used, and ``Question.ids`` every id field of the row, so answers keyed
by either field can be joined to it.
"""

import dataclasses
import hashlib
import os

from qlorakit.chat_format import cut_at_next_turn
from qlorakit.jsonl import read_jsonl
from qlorakit.questions import detect_id_key, require_fields

from .errors import InputError


@dataclasses.dataclass(frozen=True)
class Answer:
    question_id: object
    answer_id: str
    text: str
    model: str


def stable_answer_id(model, question_id, text):
    """A deterministic id for answers that carry none (the generation format), so that reruns
    of a judging command recognise the same answer and skip it."""
    digest = hashlib.sha256(f"{model}\x00{question_id}\x00{text}".encode()).hexdigest()
    return digest[:22]


def parse_answer(row, model, path="<row>", number=0, id_key="question_id"):
    """One answer row in any supported shape -> ``Answer`` (generations truncated)."""
    if not isinstance(row, dict):
        raise InputError(f"{path}:{number}: expected a JSON object")
    require_fields(row, [id_key], path, number)
    if "generation_truncated" in row or "generation" in row:
        # In this shape "text" is the question, not the answer.
        raw = row.get("generation_truncated")
        text = cut_at_next_turn(raw if raw is not None else row["generation"])
    elif "text" in row:
        text = row["text"]
    else:
        raise InputError(f"{path}:{number}: an answer needs 'text' or 'generation'")
    answer_id = row.get("answer_id") or stable_answer_id(model, row[id_key], text)
    return Answer(row[id_key], str(answer_id), text, model)


def model_name_from_path(path):
    """Default model name of an answer file: its stem, ``_`` -> ``-`` (as the reference's review
    file names spell ``answer_bard.jsonl`` as ``answer-bard``)."""
    stem = os.path.basename(path)
    for suffix in (".jsonl", ".json"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem.replace("_", "-")


def load_keyed_answers(path, model=None, id_key=None, id_flag=None):
    """``(id_key, {id: Answer})`` for an answer file, keyed by ``id_key`` (default: found in the
    file); the model name defaults to the file stem. ``id_flag``: see ``detect_id_key``."""
    model = model or model_name_from_path(path)
    rows = list(read_jsonl(path))
    id_key = id_key or detect_id_key({path: rows}, id_flag=id_flag)
    answers = {}
    for number, row in rows:
        answer = parse_answer(row, model, path, number, id_key)
        if answer.question_id in answers:
            raise InputError(f"{path}:{number}: two answers for {id_key} {answer.question_id!r}")
        answers[answer.question_id] = answer
    return id_key, answers


def load_answers(path, model=None, id_key=None, id_flag=None):
    """``{id: Answer}`` for an answer file (see ``load_keyed_answers``)."""
    return load_keyed_answers(path, model, id_key, id_flag)[1]
