"""--tools of the inference commands (qlora-generate, qlora-chat, qlora-guanaco-generate): tool definitions
rendered into the prompt by a template with a tool layout, refused by one without, as training does."""

import json

import pytest

from qlorakit import chat_data
from qlorakit.chat_data import ConversationError
from qlorakit.cli import chat, generate, guanaco_generate
from qlorakit.trained_template import inference_template
from test_moss_and_tools import TOOL_TEMPLATE, WEATHER_TOOL, as_json

TOOLS = [{"type": "function", "function": WEATHER_TOOL}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from qlorakit.tokenizer import load_tokenizer
    return load_tokenizer(tiny_model_dir)


@pytest.fixture
def tools_file(tmp_path):
    """A --tools file in LLaMA-Factory's bare shape ({"name", ...} without the function wrapper)."""
    path = tmp_path / "tools.json"
    path.write_text(as_json([WEATHER_TOOL]), encoding="utf-8")
    return str(path)


@pytest.fixture
def tool_template_file(tmp_path):
    path = tmp_path / "tools.jinja"
    path.write_text(TOOL_TEMPLATE, encoding="utf-8")
    return str(path)


class TestToolsFlag:
    def test_each_command_reads_the_file_as_the_template_takes_tools(self, tools_file):
        parsed = [generate.parse_args(["--model", "m", "-q", "q.jsonl", "-o", "o.jsonl", "--tools", tools_file]),
                  chat.parse_args(["--model_name_or_path", "m", "--tools", tools_file]),
                  guanaco_generate.parse_args(["--model_name_or_path", "m", "--tools", tools_file])]
        assert [args.tools for args in parsed] == [TOOLS] * 3

    @pytest.mark.parametrize("text, message", [("[{\"name\": ", "a JSON file is not valid JSON"),
                                               ('[{"description": "无名"}]', "not a list of named tool definitions"),
                                               ("[]", "holds no tool definitions")])
    def test_a_bad_file_is_refused_before_loading(self, tmp_path, capsys, text, message):
        path = tmp_path / "tools.json"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(SystemExit) as exit_info:
            chat.parse_args(["--model_name_or_path", "m", "--tools", str(path)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


class TestToolsInThePrompt:
    def test_every_command_renders_the_definitions_with_a_tool_template(self, tokenizer, tool_template_file):
        definitions = f"[tools]{as_json(TOOLS)}\n[user]"
        prompts = [generate.build_prompt("北京天气？", tokenizer, tool_template_file, tools=TOOLS),
                   chat.build_chat_prompt(tokenizer, TOOL_TEMPLATE, [], "北京天气？", TOOLS),
                   guanaco_generate.build_question_prompt(tokenizer, TOOL_TEMPLATE, "北京天气？", TOOLS)]
        assert prompts == [f"{definitions}北京天气？\n[assistant]"] * 3

    def test_without_tools_the_prompt_has_no_definitions(self, tokenizer):
        assert chat.build_chat_prompt(tokenizer, TOOL_TEMPLATE, [], "q") == "[user]q\n[assistant]"

    def test_a_template_with_a_tool_layout_takes_them(self, tokenizer, tool_template_file):
        assert inference_template(tool_template_file, tokenizer, None, "--chat_template", tools=TOOLS) == \
            (tool_template_file, TOOL_TEMPLATE)

    @pytest.mark.parametrize("choice", ["guanaco", "firefly", None])
    def test_a_template_without_a_tool_layout_refuses_them_as_training_does(self, tokenizer, choice):
        with pytest.raises(ConversationError, match="^--tools: has tool calls or tool definitions, but the chat "
                                                    "template has no tool layout"):
            inference_template(choice, tokenizer, None, "--prompt-format", default="guanaco", tools=TOOLS)


def test_qlora_chat_with_tools_prompts_with_them_or_refuses_in_one_line(tiny_model_dir, random_adapter_dir,
                                                                        tools_file, tool_template_file):
    from test_chat import run_chat

    result, prompts = run_chat(tiny_model_dir, random_adapter_dir, "北京天气？\n", "--tools", tools_file,
                               "--chat_template", tool_template_file)
    assert result.returncode == 0, result.stderr[-3000:]
    assert prompts == [f"[tools]{json.dumps(TOOLS, ensure_ascii=False)}\n[user]北京天气？\n[assistant]"]
    result, _ = run_chat(tiny_model_dir, random_adapter_dir, "北京天气？\n", "--tools", tools_file)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --tools: has tool calls or tool definitions, but the chat template has no tool layout (it never "
        "mentions tools or tool_calls; guanaco and firefly have none); a template that mentions tools or tool_calls "
        "has one: the tokenizer's own where it does (this tokenizer's does not), or a .jinja file")


def test_the_refusal_names_the_tokenizers_named_tool_template(tokenizer):
    saved, tokenizer.chat_template = tokenizer.chat_template, {"default": chat_data.GUANACO_TEMPLATE,
                                                                "agent": TOOL_TEMPLATE}
    try:
        with pytest.raises(ConversationError, match="the tokenizer's own has one: --chat_template tokenizer:agent$"):
            inference_template(None, tokenizer, None, "--chat_template", tools=TOOLS)
    finally:
        tokenizer.chat_template = saved


@pytest.mark.parametrize("command", [guanaco_generate, chat, generate])
def test_tools_a_template_cannot_take_are_refused_before_the_weights_load(command, tiny_model_dir, tools_file,
                                                                         tmp_path, run_in_process, monkeypatch):
    from qlorakit import inference_model

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(inference_model, "load_base_weights", no_weights)
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "text": "Hi?", "category": "generic"}) + "\n")
    flags = {generate: ["-q", str(questions), "-o", str(tmp_path / "answers.jsonl"), "--prompt-format", "guanaco"],
             guanaco_generate: ["--question", "Hi?"], chat: ["--chat_template", "guanaco"]}[command]
    result = run_in_process(command, ["--model_name_or_path", tiny_model_dir, "--tools", tools_file, *flags])
    assert result.returncode == 2
    assert "the chat template has no tool layout" in result.stderr.strip().splitlines()[-1]
