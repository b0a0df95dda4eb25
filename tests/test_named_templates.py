"""A tokenizer with named chat templates (a dict, e.g. {"default": ..., "tool_use": ...}): tool_use for rows
or --tools with tools, default otherwise, --chat_template tokenizer:NAME for any, unknown names listed."""

import argparse
import logging

import pytest

from qlorakit import chat_data, data
from qlorakit.chat_data import GUANACO_TEMPLATE, ConversationError, resolve_chat_template, template_name
from qlorakit.chat_format import template_choice
from qlorakit.config import DataArguments
from qlorakit.trained_template import inference_template
from test_data_shapes import write_jsonl
from test_moss_and_tools import OPENAI_TOOL_ROW, TOOL_TEMPLATE, formatted_conversation

TOOLS = OPENAI_TOOL_ROW["tools"]
PLAIN_ROW = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}


@pytest.fixture
def tokenizer(tiny_model_dir):
    """The tiny tokenizer holding named templates: guanaco's as default, the test tool template as tool_use."""
    from qlorakit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = {"default": GUANACO_TEMPLATE, "tool_use": TOOL_TEMPLATE}
    return tokenizer


class TestChoice:
    @pytest.mark.parametrize("choice, uses_tools, name", [(None, False, "tokenizer:default"),
                                                          (None, True, "tokenizer:tool_use"),
                                                          ("tokenizer", True, "tokenizer:tool_use"),
                                                          ("tokenizer:tool_use", False, "tokenizer:tool_use"),
                                                          ("guanaco", True, "guanaco")])
    def test_tool_use_for_tools_default_otherwise_and_a_name_picks_one(self, tokenizer, choice, uses_tools, name):
        assert template_name(choice, tokenizer, uses_tools) == name
        source, description = resolve_chat_template(choice, tokenizer, uses_tools)
        if name.startswith("tokenizer:"):
            assert source == tokenizer.chat_template[name.split(":")[1]]
            assert description == f"the tokenizer's own, its {name.split(':')[1]!r} of default, tool_use"

    def test_without_a_tool_use_template_tools_get_the_default(self, tokenizer):
        tokenizer.chat_template = {"default": TOOL_TEMPLATE, "rag": GUANACO_TEMPLATE}
        assert template_name(None, tokenizer, uses_tools=True) == "tokenizer:default"

    def test_an_unknown_name_lists_the_names(self, tokenizer):
        with pytest.raises(ConversationError, match="^--chat_template tokenizer:agent: the tokenizer has no chat "
                                                    "template named 'agent' \\(its names: default, tool_use\\)$"):
            resolve_chat_template("tokenizer:agent", tokenizer)

    def test_named_templates_without_a_default_ask_for_a_name(self, tokenizer):
        tokenizer.chat_template = {"rag": GUANACO_TEMPLATE, "tool_use": TOOL_TEMPLATE}
        with pytest.raises(ConversationError, match="no 'default': pick one with --chat_template tokenizer:NAME "
                                                    "\\(rag, tool_use\\)"):
            resolve_chat_template(None, tokenizer)
        assert resolve_chat_template("tokenizer:rag", tokenizer)[0] == GUANACO_TEMPLATE

    def test_a_single_template_is_its_default(self, tokenizer):
        tokenizer.chat_template = TOOL_TEMPLATE
        assert template_name(None, tokenizer, uses_tools=True) == "tokenizer"
        assert resolve_chat_template("tokenizer:default", tokenizer)[0] == TOOL_TEMPLATE

    def test_the_flag_takes_a_name_before_the_tokenizer_is_loaded(self):
        assert template_choice("tokenizer:tool_use") == "tokenizer:tool_use"
        with pytest.raises(argparse.ArgumentTypeError, match="tokenizer:NAME"):
            template_choice("tokenizer:")


class TestTraining:
    def built(self, tokenizer, tmp_path, rows, **flags):
        path = write_jsonl(tmp_path / "rows.jsonl", rows)
        train, _, record = data.build_datasets(DataArguments(dataset=path, **flags), tokenizer)
        return train, record

    def test_rows_with_tools_are_trained_and_saved_with_tool_use(self, tokenizer, tmp_path, caplog):
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            train, record = self.built(tokenizer, tmp_path, [PLAIN_ROW, OPENAI_TOOL_ROW])
        assert record == {"name": "tokenizer:tool_use", "template": TOOL_TEMPLATE}
        assert "chat template: the tokenizer's own, its 'tool_use' of default, tool_use;" in caplog.text
        messages, tools = formatted_conversation(OPENAI_TOOL_ROW)
        ids, mask = chat_data.encode_conversation(tokenizer, TOOL_TEMPLATE, messages, tools)
        assert train["input_ids"][1] == ids and train["assistant_mask"][1] == mask

    def test_rows_without_tools_use_the_default(self, tokenizer, tmp_path, caplog):
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            train, record = self.built(tokenizer, tmp_path, [PLAIN_ROW])
        assert record == {"name": "tokenizer:default", "template": GUANACO_TEMPLATE}
        assert "its 'default' of default, tool_use" in caplog.text
        assert train["input_ids"][0] == chat_data.encode_conversation(tokenizer, GUANACO_TEMPLATE,
                                                                      PLAIN_ROW["messages"])[0]

    def test_a_name_overrides_the_choice(self, tokenizer, tmp_path):
        _, record = self.built(tokenizer, tmp_path, [PLAIN_ROW], chat_template="tokenizer:tool_use")
        assert record == {"name": "tokenizer:tool_use", "template": TOOL_TEMPLATE}


class TestInference:
    def test_tools_pick_tool_use_and_the_choice_is_said(self, tokenizer, capsys):
        assert inference_template(None, tokenizer, None, "--chat_template", tools=TOOLS) == \
            ("tokenizer:tool_use", TOOL_TEMPLATE)
        assert capsys.readouterr().err == ("prompt template: tokenizer:tool_use (the tokenizer's own, its 'tool_use' "
                                           "of default, tool_use)\n")
        assert inference_template(None, tokenizer, None, "--chat_template") == ("tokenizer:default", GUANACO_TEMPLATE)

    def test_a_named_template_without_a_tool_layout_refuses_tools(self, tokenizer):
        with pytest.raises(ConversationError, match="no tool layout .*the tokenizer's own has one: --prompt-format "
                                                    "tokenizer:tool_use$"):
            inference_template("tokenizer:default", tokenizer, None, "--prompt-format", tools=TOOLS)
