"""eval/generate.py on the tiny local model (scripts/make_tiny_model.py): 4-bit load through
qlorakit, batched sampling, rows in the reference's generation format, resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EVAL_DIR = ROOT / "eval"

GENERATION_FIELDS = {"question_id", "text", "category", "prompt", "generation", "generation_truncated"}


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    """conftest's tiny_model_dir (scripts/make_tiny_model.py with its defaults); nothing here writes to it."""
    return Path(tiny_model_dir)


def test_generates_rows_in_the_reference_format_and_resumes(tiny_model, tmp_path):
    questions = tmp_path / "questions.jsonl"
    rows = [{"question_id": 1, "text": "What is a cat?", "category": "generic"},
            {"question_id": 2, "text": "### Human: Hi there ### Assistant:", "category": "generic"},
            {"question_id": 3, "text": "Name a colour.", "category": "writing"}]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "gen" / "tiny-generations.jsonl"
    command = [sys.executable, str(EVAL_DIR / "generate.py"), "--model_name_or_path", str(tiny_model),
               "-q", str(questions), "-o", str(out), "--max-new-tokens", "4", "--batch-size", "2"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in written] == [1, 2, 3]
    for row, question in zip(written, rows):
        assert set(row) == GENERATION_FIELDS
        assert row["text"] == question["text"] and row["category"] == question["category"]
        assert row["prompt"].endswith("### Assistant:") and row["prompt"].count("### Human:") == 1
        assert row["generation"] and "### Human:" not in row["generation_truncated"]
    assert written[0]["prompt"] == "### Human: What is a cat?### Assistant:"
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and "0 to answer" in again.stderr
    assert len(out.read_text().splitlines()) == 3


def test_prompt_formats(tiny_model):
    from transformers import AutoTokenizer

    from qlorakit.cli import generate

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert generate.build_prompt("Hi?", tokenizer, "guanaco") == "### Human: Hi?### Assistant:"
    assert generate.build_prompt("Hi?", tokenizer, "guanaco", "Be kind.") == "Be kind. ### Human: Hi?### Assistant:"
    # The tiny tokenizer's chat template is Guanaco's, so both routes agree.
    assert generate.build_prompt("Hi?", tokenizer, "tokenizer") == "### Human: Hi?### Assistant:"


def test_a_jinja_template_file_renders_prompts_as_training_does(tiny_model, tmp_path, capsys):
    from transformers import AutoTokenizer

    from qlorakit.cli import generate
    from qlorakit.chat_data import render, resolve_chat_template

    path = tmp_path / "moss.jinja"
    path.write_text("<s>{% for m in messages %}{{ m['content'] }}</s>{% endfor %}")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert generate.build_prompt("Hi?", tokenizer, str(path)) == "<s>Hi?</s>"
    template, _ = resolve_chat_template("guanaco", tokenizer)
    question = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}]
    assert generate.build_prompt("Hi?", tokenizer, "guanaco", "Be kind.") == render(tokenizer, template, question, True)
    with pytest.raises(SystemExit) as exit_info:
        generate.parse_args(["--model", "m", "-q", "q.jsonl", "-o", "o.jsonl", "--prompt-format", "vicuna"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "'vicuna' is not guanaco, firefly, tokenizer, tokenizer:NAME" in error


def test_prompt_format_is_spelt_as_training_spells_it_and_the_old_spelling_is_announced(capsys):
    from qlorakit.cli import generate

    args = generate.parse_args(["--model", "m", "-q", "q.jsonl", "-o", "o.jsonl", "--prompt-format", "tokenizer"])
    assert args.prompt_format == "tokenizer" and capsys.readouterr().err == ""
    args = generate.parse_args(["--model", "m", "-q", "q.jsonl", "-o", "o.jsonl", "--prompt-format", "chat-template"])
    assert args.prompt_format == "tokenizer"
    assert capsys.readouterr().err.strip().splitlines() == [
        "note: --prompt-format chat-template is spelt tokenizer now (as qlora.py --chat_template)"]


def test_answers_of_other_settings_are_never_mixed_into_one_file(tiny_model, random_adapter_dir, tmp_path,
                                                                 run_in_process):
    from qlorakit.cli import generate

    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "text": f"Question {i}?", "category": "generic"})
                                 + "\n" for i in range(3)))
    out = tmp_path / "answers.jsonl"
    flags = ["--model_name_or_path", str(tiny_model), "-q", str(questions), "-o", str(out), "--max-new-tokens", "2"]
    run_in_process(generate, flags, check=True)
    record = json.loads((tmp_path / "answers.settings.json").read_text())
    assert record["adapter"] is None and record["max_new_tokens"] == 2 and record["temperature"] == 0.7

    for other, change in ((["--adapter", random_adapter_dir], f"adapter None -> {random_adapter_dir}"),
                          (["--top_p", "0.5"], "top_p 0.9 -> 0.5")):
        refused = run_in_process(generate, [*flags, *other])
        assert refused.returncode == 2
        line = refused.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {out} holds 3 answers generated with other settings ({change})")
    assert len(out.read_text().splitlines()) == 3
    assert run_in_process(generate, flags).returncode == 0  # the same settings go on


@pytest.mark.parametrize("command", ["generate", "qa_baseline"])
def test_an_output_that_is_a_folder_is_refused_before_loading(command, tmp_path, run_in_process):
    from judgekit.commands import qa_baseline
    from qlorakit.cli import generate

    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "text": "Hi?", "category": "generic"}) + "\n")
    module, flags = {"generate": (generate, ["--model_name_or_path", str(tmp_path / "no-model")]),
                     "qa_baseline": (qa_baseline, [])}[command]
    result = run_in_process(module, [*flags, "-q", str(questions), "-o", str(tmp_path)])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(f"{tmp_path} is a folder: name the JSONL file to write in it")
    assert sorted(os.listdir(tmp_path)) == ["questions.jsonl"]
