"""Judge prompt and reviewer files: load, pick by question category, render. Pure.

Both file shapes are the reference's (one JSON object a line):

- prompt file: ``prompt_id``, ``system_prompt``, ``prompt_template`` (with ``{question}``,
  ``{answer_1}``, ``{answer_2}`` and ``{prompt}``), ``defaults`` (``{"prompt": ...}``),
  ``description``, ``category``;
- reviewer file: ``reviewer_id``, ``prompt_id``, ``metadata`` (``temperature``,
  ``max_tokens``), ``description``, ``category``.

A question is judged by the reviewer of its category, else by the ``general`` reviewer.

The package ships its own prompt and reviewer files (prompt_files/), so an installed judge runs
without any file of the user's; ``-p`` / ``-r`` replace them.
"""

import dataclasses
import os

from qlorakit.jsonl import read_jsonl

from .errors import InputError
from .verdicts import get_kind

PACKAGED_FILES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompt_files")
PACKAGED_REVIEWER_FILE = os.path.join(PACKAGED_FILES_DIR, "judge_reviewer.jsonl")
FALLBACK_CATEGORY = "general"
PROMPT_FIELDS = ("prompt_id", "system_prompt", "prompt_template", "defaults", "category")
REVIEWER_FIELDS = ("reviewer_id", "prompt_id", "category")


@dataclasses.dataclass(frozen=True)
class JudgePrompt:
    prompt_id: object
    system_prompt: str
    prompt_template: str
    defaults: dict
    category: str
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Reviewer:
    reviewer_id: object
    prompt_id: object
    category: str
    temperature: float = 0.2
    max_tokens: int = 1024
    description: str = ""


def packaged_prompt_file(kind):
    """The prompt file that asks for verdicts of ``kind`` (its ``prompt_file``, in prompt_files/)."""
    return os.path.join(PACKAGED_FILES_DIR, get_kind(kind).prompt_file)


def _check_fields(row, fields, path, number):
    if not isinstance(row, dict):
        raise InputError(f"{path}:{number}: expected a JSON object")
    missing = [field for field in fields if field not in row]
    if missing:
        raise InputError(f"{path}:{number}: missing field(s) {', '.join(missing)}")


def load_prompts(path):
    """``{prompt_id: JudgePrompt}`` of a prompt file."""
    prompts = {}
    for number, row in read_jsonl(path):
        _check_fields(row, PROMPT_FIELDS, path, number)
        prompts[row["prompt_id"]] = JudgePrompt(
            prompt_id=row["prompt_id"],
            system_prompt=row["system_prompt"],
            prompt_template=row["prompt_template"],
            defaults=dict(row["defaults"] or {}),
            category=row["category"],
            description=row.get("description", ""),
        )
    if not prompts:
        raise InputError(f"{path}: no prompts in file")
    return prompts


def load_reviewers(path):
    """``{category: Reviewer}`` of a reviewer file."""
    reviewers = {}
    for number, row in read_jsonl(path):
        _check_fields(row, REVIEWER_FIELDS, path, number)
        metadata = row.get("metadata") or {}
        reviewers[row["category"]] = Reviewer(
            reviewer_id=row["reviewer_id"],
            prompt_id=row["prompt_id"],
            category=row["category"],
            temperature=float(metadata.get("temperature", 0.2)),
            max_tokens=int(metadata.get("max_tokens", 1024)),
            description=row.get("description", ""),
        )
    if not reviewers:
        raise InputError(f"{path}: no reviewers in file")
    return reviewers


def check_reviewers_have_prompts(reviewers, prompts, reviewer_path, prompt_path):
    """Fail early, before any request is paid for, if a reviewer names a missing prompt."""
    for reviewer in reviewers.values():
        if reviewer.prompt_id not in prompts:
            raise InputError(
                f"{reviewer_path}: reviewer {reviewer.reviewer_id!r} (category {reviewer.category!r}) "
                f"uses prompt_id {reviewer.prompt_id!r}, which {prompt_path} does not define"
            )


def select_reviewer(reviewers, category):
    """The reviewer for a question category: exact match, else the ``general`` one."""
    if category in reviewers:
        return reviewers[category]
    if FALLBACK_CATEGORY in reviewers:
        return reviewers[FALLBACK_CATEGORY]
    known = ", ".join(sorted(reviewers))
    raise InputError(
        f"unknown prompt category {category!r}: the reviewer file has [{known}] and no "
        f"{FALLBACK_CATEGORY!r} fallback"
    )


def render_messages(prompt, question, answer_1, answer_2):
    """The chat messages (system + user) asking the judge to compare two answers.

    >>> p = JudgePrompt(1, "Be fair.", "Q: {question}\\n1: {answer_1}\\n2: {answer_2}\\n{prompt}",
    ...                 {"prompt": "Pick one."}, "general")
    >>> render_messages(p, "2+2?", "4", "5")[1]["content"]
    'Q: 2+2?\\n1: 4\\n2: 5\\nPick one.'
    """
    values = dict(prompt.defaults)
    values.update(question=question, answer_1=answer_1, answer_2=answer_2)
    try:
        content = prompt.prompt_template.format(**values)
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(f"prompt {prompt.prompt_id!r}: template cannot be filled ({err!r})") from None
    return [
        {"role": "system", "content": prompt.system_prompt},
        {"role": "user", "content": content},
    ]
