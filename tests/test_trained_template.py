"""The prompt template a run trained with: saved beside the adapter (prompt_template.json), in the
saved and merged tokenizers, and used by qlora-chat, qlora-guanaco-generate and qlora-generate."""

import json
import os

import pytest
from transformers import AutoTokenizer

from qlorakit import SAMPLE_DATA_DIR
from qlorakit.chat_data import GUANACO_TEMPLATE, render
from qlorakit.cli import generate, guanaco_generate, merge_adapter

# Not the tiny tokenizer's own (Guanaco-like) template: a prompt rendered with anything else shows.
ROLE_TAGS_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
                      "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
                      "{% if add_generation_prompt %}<assistant>{% endif %}")
QUESTION = "Hi?"


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    """(run folder, .jinja path): 2 steps on the chat sample rendered with a .jinja template."""
    from qlorakit.config import parse_arguments
    from qlorakit.train import setup_trainer

    run_dir = tmp_path_factory.mktemp("template-run")
    template_path = run_dir.parent / "role_tags.jinja"
    template_path.write_text(ROLE_TAGS_TEMPLATE)
    arguments = parse_arguments([
        "--model_name_or_path", tiny_model_dir, "--output_dir", str(run_dir),
        "--dataset", os.path.join(SAMPLE_DATA_DIR, "chat_sample.jsonl"), "--chat_template", str(template_path),
        "--use_cpu", "--bf16", "False", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
        "--max_seq_len", "64", "--lora_r", "4", "--lora_alpha", "8", "--max_steps", "2", "--save_steps", "2",
        "--seed", "0",
    ])
    trainer, _, _ = setup_trainer(arguments)
    trainer.train()
    return str(run_dir), str(template_path)


@pytest.fixture(scope="module")
def adapter_dir(trained_run):
    return os.path.join(trained_run[0], "checkpoint-2", "adapter_model")


@pytest.fixture(scope="module")
def training_prompt(tiny_model_dir):
    """The question as training renders a conversation's first user turn, ready for the reply."""
    from qlorakit.tokenizer import load_tokenizer

    return render(load_tokenizer(tiny_model_dir), ROLE_TAGS_TEMPLATE, [{"role": "user", "content": QUESTION}], True)


def test_the_adapter_keeps_the_template_by_name_and_text(trained_run, adapter_dir):
    with open(os.path.join(adapter_dir, "prompt_template.json"), encoding="utf-8") as handle:
        saved = json.load(handle)
    assert saved == {"name": trained_run[1], "template": ROLE_TAGS_TEMPLATE}


def test_the_checkpoint_tokenizer_carries_the_template(trained_run):
    checkpoint_tokenizer = AutoTokenizer.from_pretrained(os.path.join(trained_run[0], "checkpoint-2"))
    assert checkpoint_tokenizer.chat_template == ROLE_TAGS_TEMPLATE


def test_qlora_chat_prompts_as_trained(tiny_model_dir, trained_run, adapter_dir, training_prompt):
    from test_chat import run_chat

    result, prompts = run_chat(tiny_model_dir, adapter_dir, f"{QUESTION}\n", "--max_new_tokens", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert prompts == [training_prompt]
    assert f"prompt template: {trained_run[1]} (as trained, from " in result.stderr


def test_qlora_guanaco_generate_prompts_as_trained(tiny_model_dir, adapter_dir, training_prompt, run_in_process):
    result = run_in_process(guanaco_generate, ["--model_name_or_path", tiny_model_dir, "--adapter", adapter_dir,
                                               "--question", QUESTION, "--temperature", "0", "--max_new_tokens", "1"],
                            check=True)
    assert result.stdout.startswith(training_prompt)
    assert "as trained, from " + os.path.join(adapter_dir, "prompt_template.json") in result.stderr


def test_a_template_flag_wins_and_says_it_differs(tiny_model_dir, adapter_dir, capsys):
    from qlorakit.tokenizer import load_tokenizer
    from qlorakit.trained_template import inference_template

    tokenizer = load_tokenizer(tiny_model_dir)
    assert inference_template("guanaco", tokenizer, adapter_dir, "--chat_template") == ("guanaco", GUANACO_TEMPLATE)
    assert "prompt template: guanaco (--chat_template; differs from the " in capsys.readouterr().err


def test_qlora_generate_prompts_as_trained(tiny_model_dir, adapter_dir, training_prompt, tmp_path, run_in_process):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "text": QUESTION, "category": "generic"}) + "\n")
    output = tmp_path / "generations.jsonl"
    result = run_in_process(generate, ["--model_name_or_path", tiny_model_dir, "--adapter", adapter_dir,
                                       "-q", str(questions), "-o", str(output), "--max-new-tokens", "1"], check=True)
    assert json.loads(output.read_text())["prompt"] == training_prompt
    assert "(as trained, from " in result.stderr


def test_the_merged_tokenizer_carries_the_template(tiny_model_dir, adapter_dir, tmp_path, run_in_process):
    result = run_in_process(merge_adapter, ["--base_model", tiny_model_dir, "--adapter", adapter_dir,
                                            "--output", str(tmp_path / "merged"), "--dtype", "fp32"], check=True)
    assert AutoTokenizer.from_pretrained(tmp_path / "merged").chat_template == ROLE_TAGS_TEMPLATE
    assert "chat template of the saved tokenizer: " in result.stdout


def test_an_adapter_without_the_file_is_prompted_as_before(tiny_model_dir, random_adapter_dir, capsys):
    from qlorakit.tokenizer import load_tokenizer
    from qlorakit.trained_template import inference_template

    tokenizer = load_tokenizer(tiny_model_dir)
    assert inference_template(None, tokenizer, random_adapter_dir, "--chat_template", "guanaco") == \
        ("guanaco", GUANACO_TEMPLATE)
    assert capsys.readouterr().err == ""


class TestRecordOfTheData:
    @pytest.fixture(scope="class")
    def tokenizer(self, tiny_model_dir):
        from qlorakit.tokenizer import load_tokenizer
        return load_tokenizer(tiny_model_dir)

    def records(self, tokenizer, *flags):
        from qlorakit.config import parse_arguments
        from qlorakit.data import build_datasets

        arguments = parse_arguments(["--model_name_or_path", "unused", "--output_dir", "unused", *flags])
        return build_datasets(arguments.data, tokenizer)[2]

    def test_guanaco_layout_formats_record_the_guanaco_template(self, tokenizer):
        record = self.records(tokenizer, "--dataset", os.path.join(SAMPLE_DATA_DIR, "oasst1_sample.jsonl"))
        assert record == {"name": "guanaco", "template": GUANACO_TEMPLATE}

    def test_the_tokenizers_own_is_recorded_as_text_too(self, tokenizer):
        record = self.records(tokenizer, "--dataset", os.path.join(SAMPLE_DATA_DIR, "chat_sample.jsonl"))
        assert record == {"name": "tokenizer", "template": tokenizer.chat_template}

    def test_layouts_no_chat_template_writes_record_nothing(self, tokenizer):
        assert self.records(tokenizer, "--dataset", os.path.join(SAMPLE_DATA_DIR, "alpaca_sample.json")) is None
