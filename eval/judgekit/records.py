"""Read questions, answers and review rows in every shape the QLoRA release uses (rows are
written by qlorakit.jsonl, so that a crash loses at most the row being written).

Shapes read (those of the QLoRA release's eval/ folder):

- questions: ``{"question_id", "text", "category"}`` (Vicuna), the same plus ``input``/``output``
  (OpenAssistant benchmark), or ``{"question_id", "turns": [...]}`` (FastChat llm_judge);
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

from .errors import InputError

ID_KEYS = ("question_id", "message_id")  # Vicuna / OpenAssistant


@dataclasses.dataclass(frozen=True)
class Question:
    question_id: object
    text: str
    category: str = "general"
    ids: dict = dataclasses.field(default_factory=dict, compare=False)  # {"question_id": 1, ...}


@dataclasses.dataclass(frozen=True)
class Answer:
    question_id: object
    answer_id: str
    text: str
    model: str


def detect_id_key(rows_by_path, id_key=None, id_flag=None):
    """The id field every row of every file has: ``id_key`` when given (checked), else the first
    of ``ID_KEYS`` they all carry. ``rows_by_path`` maps a path to its ``(number, row)`` list.
    ``id_flag``: the calling command's flag that names the field, suggested in errors; None for
    a command without one (an error may only suggest flags its command accepts).

    >>> detect_id_key({"q.jsonl": [(1, {"question_id": 1, "message_id": "a"})], "a.jsonl": [(1, {"message_id": "a"})]})
    'message_id'
    """
    candidates = [id_key] if id_key else ID_KEYS
    how = f"name the field with {id_flag}" if id_flag else "see the question-file format in eval/README.md"
    for key in candidates:
        if all(isinstance(row, dict) and key in row for rows in rows_by_path.values() for _, row in rows):
            return key
    for path, rows in rows_by_path.items():
        for number, row in rows:
            if not isinstance(row, dict) or not any(key in row for key in candidates):
                raise InputError(f"{path}:{number}: no {' or '.join(candidates)} field to identify the question"
                                 + ("" if id_key else f"; {how}"))
    raise InputError(f"no id field is shared by {', '.join(rows_by_path)}: these files key their rows by "
                     f"different fields; {how}")


def _require(row, keys, path, number):
    missing = [key for key in keys if key not in row]
    if missing:
        raise InputError(f"{path}:{number}: missing field(s) {', '.join(missing)}")


def parse_question(row, path="<row>", number=0, id_key="question_id"):
    """One question row in any supported shape -> ``Question``."""
    if not isinstance(row, dict):
        raise InputError(f"{path}:{number}: expected a JSON object")
    _require(row, [id_key], path, number)
    if "text" in row:
        text = row["text"]
    elif "input" in row:
        text = row["input"]
    elif row.get("turns"):
        text = row["turns"][0]
    else:
        raise InputError(f"{path}:{number}: a question needs 'text', 'input' or 'turns'")
    ids = {key: row[key] for key in dict.fromkeys((id_key, *ID_KEYS)) if key in row}
    return Question(row[id_key], text, row.get("category") or "general", ids)


def load_questions(path, id_key=None, id_flag=None):
    """All questions of ``path`` in file order, identified by ``id_key`` (default: found in the
    file); duplicate ids are an error. ``id_flag``: see ``detect_id_key``."""
    rows = list(read_jsonl(path))
    id_key = id_key or detect_id_key({path: rows}, id_flag=id_flag)
    questions, seen = [], set()
    for number, row in rows:
        question = parse_question(row, path, number, id_key)
        if question.question_id in seen:
            raise InputError(f"{path}:{number}: duplicate {id_key} {question.question_id!r}")
        seen.add(question.question_id)
        questions.append(question)
    return questions


def stable_answer_id(model, question_id, text):
    """A deterministic id for answers that carry none (the generation format), so that reruns
    of a judging command recognise the same answer and skip it."""
    digest = hashlib.sha256(f"{model}\x00{question_id}\x00{text}".encode()).hexdigest()
    return digest[:22]


def parse_answer(row, model, path="<row>", number=0, id_key="question_id"):
    """One answer row in any supported shape -> ``Answer`` (generations truncated)."""
    if not isinstance(row, dict):
        raise InputError(f"{path}:{number}: expected a JSON object")
    _require(row, [id_key], path, number)
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


def load_done_keys(path, key_of):
    """Keys (``key_of(row)``) of the rows already in an output file; none if it does not exist.

    Used to resume: work whose key is here has been paid for and is not asked again.
    """
    if not os.path.isfile(path):
        return set()
    return {key_of(row) for _, row in read_jsonl(path, tolerate_torn_tail=True)}
