"""Question files, as the generation and judge commands read them (torch-free).

Shapes: ``{"question_id", "text", "category"}`` (Vicuna), the same plus ``input``/``output``
(OpenAssistant benchmark, keyed by ``message_id``), or ``{"question_id", "turns": [...]}``
(FastChat llm_judge). The id field is the one the rows carry (``ID_KEYS``, in that order) unless
named. Here rather than in judgekit so that answering questions (qlorakit) does not depend on the
judge side; judgekit builds its answer and review readers on these.
"""

import dataclasses

from .errors import InputError
from .jsonl import read_jsonl

ID_KEYS = ("question_id", "message_id")  # Vicuna / OpenAssistant


@dataclasses.dataclass(frozen=True)
class Question:
    question_id: object
    text: str
    category: str = "general"
    ids: dict = dataclasses.field(default_factory=dict, compare=False)  # {"question_id": 1, ...}


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


def require_fields(row, keys, path, number):
    missing = [key for key in keys if key not in row]
    if missing:
        raise InputError(f"{path}:{number}: missing field(s) {', '.join(missing)}")


def parse_question(row, path="<row>", number=0, id_key="question_id"):
    """One question row in any supported shape -> ``Question``."""
    if not isinstance(row, dict):
        raise InputError(f"{path}:{number}: expected a JSON object")
    require_fields(row, [id_key], path, number)
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
