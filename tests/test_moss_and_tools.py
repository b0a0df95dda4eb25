"""MOSS-003 rows read natively, and tool calls rendered by a template with a tool layout: rows in the
public shapes (MOSS-003 SFT, OpenAI tool_calls, LLaMA-Factory's ShareGPT function_call/observation),
written here."""

import json
import logging

import pytest
from datasets import Dataset

from qlorakit import chat_data, data, moss
from qlorakit.chat_data import ConversationError
from qlorakit.errors import SkippedRow
from qlorakit.config import DataArguments
from test_chat_data import expected_mask
from test_data_shapes import preview, trained_text, untrained_text, write_jsonl

META = "你是一个名叫小蓝的人工智能助手，回答要简洁。\n"
EXCHANGES = [("推荐一种适合初学者的乐器。", "尤克里里：四根弦，和弦简单，几周就能弹唱。"),
             ("要练多久才能弹一首歌？", "每天练半小时，大约两周可以弹一首简单的歌。")]
NO_TOOL_FIELDS = {"Inner Thoughts": "<|Inner Thoughts|>: None<eot>\n", "Commands": "<|Commands|>: None<eoc>\n",
                  "Tool Responses": "<|Results|>: None<eor>\n"}


def moss_turn(question, answer, extra=None):
    """A turn in MOSS-003's markers; `extra` its tool fields (the no-tools release has none)."""
    return {"Human": f"<|Human|>: {question}<eoh>\n", **(extra or {}), "MOSS": f"<|MOSS|>: {answer}<eom>\n"}


def moss_row(exchanges, extra=None, num_turns=None):
    return {"conversation_id": 1, "meta_instruction": META, "num_turns": num_turns or len(exchanges),
            "chat": {f"turn_{n}": moss_turn(q, a, extra) for n, (q, a) in enumerate(exchanges, start=1)}}


def firefly_row(exchanges):
    return {"conversation_id": 1, "category": "Brainstorming",
            "conversation": [{"human": q, "assistant": a} for q, a in exchanges]}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from qlorakit.tokenizer import load_tokenizer
    return load_tokenizer(tiny_model_dir)


def tokenized_rows(path, tokenizer, **flags):
    train, _, _ = data.build_datasets(DataArguments(dataset=str(path), **flags), tokenizer)
    return list(zip(train["input_ids"], train["assistant_mask"]))


class TestMossRows:
    COLUMNS = ["conversation_id", "meta_instruction", "num_turns", "chat"]

    def test_detected_from_chat_and_num_turns_and_no_other_format_fits(self):
        assert data.detect_format(self.COLUMNS, "moss.jsonl") == "moss"
        assert [name for name, f in data.FORMATS.items() if data.format_fits(f, set(self.COLUMNS))] == ["moss"]
        others = [needs for name, f in data.FORMATS.items() if name != "moss" for needs in f.needs]
        assert all(data.format_fits(data.FORMATS["moss"], set(needs)) is None for needs in others)
        with pytest.raises(data.DataError, match="closest: moss \\(has chat; lacks num_turns\\)"):
            data.detect_format(["chat"], "chat_only.jsonl")

    def test_markers_are_stripped_and_meta_instruction_is_the_system_turn(self):
        messages = moss.format_moss(moss_row(EXCHANGES, NO_TOOL_FIELDS))["messages"]
        assert messages == [{"role": "system", "content": META}] + [
            {"role": role, "content": text} for q, a in EXCHANGES for role, text in (("user", q), ("assistant", a))]

    def test_turns_are_in_numeric_order(self):
        exchanges = [(f"第{n}个问题", f"第{n}个回答") for n in range(1, 12)]
        row = moss_row(exchanges)
        row["chat"] = dict(sorted(row["chat"].items()))  # turn_1, turn_10, turn_11, turn_2, ...
        replies = [m["content"] for m in moss.format_moss(row)["messages"] if m["role"] == "assistant"]
        assert replies == [a for _, a in exchanges]

    def test_with_firefly_token_ids_and_masks_equal_the_firefly_rows(self, tokenizer, tmp_path, caplog):
        moss_path = write_jsonl(tmp_path / "moss.jsonl", [moss_row(EXCHANGES, NO_TOOL_FIELDS), moss_row(EXCHANGES[1:])])
        firefly_path = write_jsonl(tmp_path / "firefly.jsonl", [firefly_row(EXCHANGES), firefly_row(EXCHANGES[1:])])
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            from_moss = tokenized_rows(moss_path, tokenizer, chat_template="firefly")
        assert from_moss == tokenized_rows(firefly_path, tokenizer, chat_template="firefly")
        assert sum(from_moss[0][1]) > 0
        assert "dataset format moss, detected from the columns (chat, num_turns)" in caplog.text
        assert "columns not used by format moss: meta_instruction (the chat template firefly has no system layout)" \
            in caplog.text
        assert "columns not used by format moss: conversation_id" in caplog.text

    def test_with_guanaco_meta_instruction_is_the_untrained_system_prompt(self, tiny_model_dir, tmp_path, capsys):
        path = write_jsonl(tmp_path / "moss.jsonl", [moss_row(EXCHANGES, NO_TOOL_FIELDS)])
        code, segments, _ = preview(tiny_model_dir, tmp_path, capsys, path, "--chat_template", "guanaco")
        assert code == 0 and untrained_text(segments).startswith(f"<s>{META} ### Human: {EXCHANGES[0][0]}")
        assert trained_text(segments) == [f" {a}</s>" for _, a in EXCHANGES]

    def test_which_templates_have_a_system_layout(self, tokenizer, tmp_path):
        turn = "{{ m['role'] }}: {{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
        templates = {"raises": "{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}" + turn,
                     "drops": "{% if m['role'] != 'system' %}" + turn + "{% endif %}", "writes": turn}
        paths = {}
        for name, body in templates.items():
            paths[name] = tmp_path / f"{name}.jinja"
            paths[name].write_text("{% for m in messages %}" + body + "{% endfor %}", encoding="utf-8")
        choices = ["guanaco", "firefly", *(str(path) for path in paths.values())]
        assert [chat_data.has_system_layout(choice, tokenizer) for choice in choices] == [True, False, False, False,
                                                                                          True]

    @pytest.mark.parametrize("row, message", [
        (moss_row(EXCHANGES, num_turns=3), "row 2 of split 'train': has num_turns 3 but the turns turn_1, turn_2"),
        ({**moss_row(EXCHANGES[:1]), "chat": {"turn_1": {"Human": "<|Human|>: 你好<eoh>\n"}}},
         "row 2 of split 'train': turn_1 lacks its MOSS text"),
        (moss_row(EXCHANGES, {"Thoughts": "<|Thoughts|>: 想一想<eot>\n"}),
         "row 2 of split 'train': turn_1 has an unknown field 'Thoughts' (known: Human, Inner Thoughts, Commands, "
         "Tool Responses, MOSS)"),
    ])
    def test_a_bad_row_is_named_in_one_line(self, tiny_model_dir, tmp_path, capsys, row, message):
        path = write_jsonl(tmp_path / "moss.jsonl", [moss_row(EXCHANGES), row])
        code, _, error = preview(tiny_model_dir, tmp_path, capsys, path, "--chat_template", "firefly")
        assert code == 2 and error == f"error: {path}: {message}"


# A tool-aware template written for these tests: the tools as JSON first, each call as <call>{...}</call>,
# every assistant turn closed by eos.
TOOL_TEMPLATE = (
    "{% if tools %}[tools]{{ tools | tojson }}{{ '\\n' }}{% endif %}"
    "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}"
    "{% if m['tool_calls'] %}{% for call in m['tool_calls'] %}<call>{{ call['function'] | tojson }}</call>"
    "{% endfor %}{% endif %}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)
WEATHER_TOOL = {"name": "查询天气", "description": "查询一个城市今天的天气",
                "parameters": {"type": "object", "properties": {"城市": {"type": "string"}}, "required": ["城市"]}}
CALL = {"name": "查询天气", "arguments": {"城市": "北京"}}
RESULT = '{"天气": "晴", "气温": 25}'
QUESTION, ANSWER = "北京今天天气怎么样？", "北京今天晴，气温25度。"
# LLaMA-Factory's ShareGPT shape: function_call and observation turns, the tools as a JSON string column.
SHAREGPT_TOOL_ROW = {"conversations": [{"from": "human", "value": QUESTION},
                                       {"from": "function_call", "value": json.dumps(CALL, ensure_ascii=False)},
                                       {"from": "observation", "value": RESULT}, {"from": "gpt", "value": ANSWER}],
                     "tools": json.dumps([WEATHER_TOOL], ensure_ascii=False)}
# The same conversation in OpenAI's shape: arguments as JSON text, the result answering the call's id.
OPENAI_TOOL_ROW = {"messages": [
    {"role": "user", "content": QUESTION},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": CALL["name"], "arguments": json.dumps(CALL["arguments"], ensure_ascii=False)}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": RESULT},
    {"role": "assistant", "content": ANSWER}],
    "tools": [{"type": "function", "function": WEATHER_TOOL}]}


def as_json(value):
    return json.dumps(value, ensure_ascii=False)


def formatted_conversation(row):
    """(messages, tools) of one chat row as the chat template receives them."""
    stored = data.apply_format(data.DatasetDict({"train": Dataset.from_list([row])}), "chat", "tools.jsonl")["train"][0]
    return chat_data.with_tool_fields(stored["messages"], stored[chat_data.TOOL_COLUMN])


class TestToolCalls:
    def test_sharegpt_function_call_turns_become_openai_tool_calls(self):
        messages, tools = formatted_conversation(SHAREGPT_TOOL_ROW)
        assert tools == [{"type": "function", "function": WEATHER_TOOL}]
        call_turn = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]}
        assert messages == [{"role": "user", "content": QUESTION}, call_turn, {"role": "tool", "content": RESULT},
                            {"role": "assistant", "content": ANSWER}]

    def test_calls_are_trained_and_results_are_not(self, tokenizer):
        messages, tools = formatted_conversation(SHAREGPT_TOOL_ROW)
        pieces = [(f"[tools]{as_json(tools)}\n[user]{QUESTION}\n[assistant]", False),
                  (f"<call>{as_json(CALL)}</call></s>", True), (f"\n[tool]{RESULT}\n[assistant]", False),
                  (f"{ANSWER}</s>", True), ("\n", False)]
        text, oracle = expected_mask(tokenizer, pieces)
        assert chat_data.render(tokenizer, TOOL_TEMPLATE, messages, tools=tools) == text
        ids, mask = chat_data.encode_conversation(tokenizer, TOOL_TEMPLATE, messages, tools)
        assert mask == oracle
        assert ids == [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]

    def test_openai_and_sharegpt_rows_render_alike(self, tokenizer):
        sharegpt, openai = (formatted_conversation(row) for row in (SHAREGPT_TOOL_ROW, OPENAI_TOOL_ROW))
        assert openai[0][1]["tool_calls"][0]["id"] == "call_1" and openai[0][2]["tool_call_id"] == "call_1"
        assert (chat_data.encode_conversation(tokenizer, TOOL_TEMPLATE, *sharegpt)
                == chat_data.encode_conversation(tokenizer, TOOL_TEMPLATE, *openai))

    def test_a_jinja_file_with_a_tool_layout_trains_from_a_file(self, tiny_model_dir, tmp_path, capsys):
        template = tmp_path / "tools.jinja"
        template.write_text(TOOL_TEMPLATE, encoding="utf-8")
        plain = {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}]}
        path = write_jsonl(tmp_path / "tools.jsonl", [SHAREGPT_TOOL_ROW, plain])
        code, segments, _ = preview(tiny_model_dir, tmp_path, capsys, path, "--chat_template", str(template))
        assert code == 0 and trained_text(segments) == [f"<call>{as_json(CALL)}</call></s>", f"{ANSWER}</s>"]
        assert f"[tool]{RESULT}" in untrained_text(segments) and "查询一个城市今天的天气" in untrained_text(segments)

    def test_a_tool_source_mixes_with_other_conversations(self, tokenizer, tmp_path):
        """OpenAI rows whose messages carry tool keys read as free-form JSON; formatted, they are
        conversations like any other source's."""
        template = tmp_path / "tools.jinja"
        template.write_text(TOOL_TEMPLATE, encoding="utf-8")
        sources = [write_jsonl(tmp_path / "openai.jsonl", [OPENAI_TOOL_ROW]),
                   write_jsonl(tmp_path / "moss.jsonl", [moss_row(EXCHANGES)])]
        rows = tokenized_rows(",".join(sources), tokenizer, chat_template=str(template))
        messages, tools = formatted_conversation(OPENAI_TOOL_ROW)
        assert chat_data.encode_conversation(tokenizer, TOOL_TEMPLATE, messages, tools) in rows and len(rows) == 2

    @pytest.mark.parametrize("template", ["guanaco", "firefly"])
    @pytest.mark.parametrize("row", [SHAREGPT_TOOL_ROW, {**OPENAI_TOOL_ROW, "tools": None},
                                     {"messages": OPENAI_TOOL_ROW["messages"][:1] + [{"role": "assistant",
                                                                                      "content": "好的"}],
                                      "tools": OPENAI_TOOL_ROW["tools"]}])
    def test_a_template_without_a_tool_layout_refuses_them_in_one_line(self, tiny_model_dir, tmp_path, capsys,
                                                                       template, row):
        plain = ({"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}
                 if "messages" in row else {"conversations": [{"from": "human", "value": "你好"},
                                                              {"from": "gpt", "value": "你好！"}]})
        path = write_jsonl(tmp_path / "tools.jsonl", [plain, row])
        code, _, error = preview(tiny_model_dir, tmp_path, capsys, path, "--chat_template", template)
        assert code == 2 and error.startswith(f"error: {path}: row 2: has tool calls or tool definitions, but the "
                                              "chat template has no tool layout")
        assert "the tokenizer's own where it does (this tokenizer's does not), or a .jinja file" in error

    def test_the_refusal_names_the_tokenizers_template_when_it_has_a_tool_layout(self, tokenizer):
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        rows = Dataset.from_list([{"messages": messages, chat_data.TOOL_COLUMN: as_json({"tools": [], "messages": {}}),
                                   chat_data.ROW_COLUMN: 6}])
        saved, tokenizer.chat_template = tokenizer.chat_template, TOOL_TEMPLATE
        try:
            with pytest.raises(ConversationError, match="rows.jsonl: row 7: .*the tokenizer's own has one: "
                                                        "--chat_template tokenizer"):
                chat_data.tokenize_chat_dataset(rows, tokenizer, chat_data.GUANACO_TEMPLATE, 100, "rows.jsonl")
        finally:
            tokenizer.chat_template = saved

    @pytest.mark.parametrize("row, message", [
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "查询天气(北京)"},
                            {"from": "observation", "value": "晴"}, {"from": "gpt", "value": "晴。"}]},
         "message 2 \\(function_call\\) is not valid JSON"),
        ({"messages": [{"role": "user", "content": "q"},
                       {"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": "{}"}}]}]},
         "message 2 has a tool call without a name"),
        ({**SHAREGPT_TOOL_ROW, "tools": '[{"description": "无名工具"}]'},
         "has a tools column that is not a list of named tool definitions"),
    ])
    def test_malformed_tool_rows_are_named(self, row, message):
        with pytest.raises(data.DataError, match=f"tools.jsonl: row 1 of split 'train': {message}"):
            formatted_conversation(row)


class TestMossToolUse:
    PLUGIN_TURN = {"Inner Thoughts": "<|Inner Thoughts|>: 需要查一下尤克里里的价格。<eot>\n",
                   "Commands": "<|Commands|>: Search(\"尤克里里 价格\")<eoc>\n",
                   "Tool Responses": "<|Results|>:\nSearch(\"尤克里里 价格\") =>\n<|1|>: '入门款约两百元'\n<eor>\n"}

    def test_a_plugin_turn_is_a_tool_call_then_its_results(self):
        messages = moss.format_moss(moss_row(EXCHANGES[:1], self.PLUGIN_TURN))["messages"]
        assert messages[2:4] == [
            {"role": "assistant", "content": "需要查一下尤克里里的价格。",
             "tool_calls": [{"type": "function", "function": {"name": "Search", "arguments": {"input": "尤克里里 价格"}}}]},
            {"role": "tool", "content": "Search(\"尤克里里 价格\") =>\n<|1|>: '入门款约两百元'"}]
        assert messages[4] == {"role": "assistant", "content": EXCHANGES[0][1]}

    def test_rendered_by_a_tool_template_and_refused_by_firefly(self, tiny_model_dir, tmp_path, capsys):
        template = tmp_path / "tools.jinja"
        template.write_text(TOOL_TEMPLATE, encoding="utf-8")
        path = write_jsonl(tmp_path / "moss.jsonl", [moss_row(EXCHANGES[:1], self.PLUGIN_TURN)])
        code, segments, _ = preview(tiny_model_dir, tmp_path, capsys, path, "--chat_template", str(template))
        call = as_json({"name": "Search", "arguments": {"input": "尤克里里 价格"}})
        assert code == 0 and trained_text(segments) == [f"需要查一下尤克里里的价格。<call>{call}</call></s>",
                                                        f"{EXCHANGES[0][1]}</s>"]
        assert untrained_text(segments).startswith(f"<s>[system]{META}\n[user]")
        code, _, error = preview(tiny_model_dir, tmp_path, capsys, path, "--chat_template", "firefly")
        assert code == 2 and "row 1: has tool calls or tool definitions, but the chat template has no tool layout" \
            in error

    def test_the_tokenizers_own_tool_template_renders_them_with_the_system_turn(self, tokenizer, tmp_path):
        """No --chat_template: the tokenizer's own template, which has a tool layout and renders a system
        message, so meta_instruction is the system turn."""
        path = write_jsonl(tmp_path / "moss.jsonl", [moss_row(EXCHANGES[:1], self.PLUGIN_TURN)])
        messages = moss.format_moss(moss_row(EXCHANGES[:1], self.PLUGIN_TURN))["messages"]
        saved, tokenizer.chat_template = tokenizer.chat_template, TOOL_TEMPLATE
        try:
            assert tokenized_rows(path, tokenizer) == [chat_data.encode_conversation(tokenizer, TOOL_TEMPLATE, messages)]
        finally:
            tokenizer.chat_template = saved
        assert messages[0] == {"role": "system", "content": META}

    def test_a_command_that_is_not_a_call_is_named(self):
        turn = {**self.PLUGIN_TURN, "Commands": "<|Commands|>: 搜索一下<eoc>\n"}
        with pytest.raises(SkippedRow, match="turn_1 has commands that are not Name"):
            moss.format_moss(moss_row(EXCHANGES[:1], turn))

    @pytest.mark.parametrize("commands", ["None", "None.", ""])
    def test_thoughts_without_a_command_are_a_plain_turn_their_thoughts_dropped(self, commands):
        """MOSS writes `Commands: None` for a turn that thinks but calls no plugin."""
        turn = {"Inner Thoughts": "<|Inner Thoughts|>: 这是常识，不必搜索，直接回答。<eot>\n",
                "Commands": f"<|Commands|>: {commands}<eoc>\n", "Tool Responses": "<|Results|>:\nNone\n<eor>\n"}
        formatted = moss.format_moss(moss_row(EXCHANGES, turn))
        assert formatted["messages"] == moss.format_moss(moss_row(EXCHANGES, NO_TOOL_FIELDS))["messages"]
        assert formatted[moss.THOUGHTS_DROPPED] == 2

    def test_thoughts_without_a_command_load_beside_plugin_turns_and_are_counted(self, tiny_model_dir, tmp_path,
                                                                                 capsys, caplog):
        thinking = {"Inner Thoughts": "<|Inner Thoughts|>: 用户问练习时间，凭经验回答即可。<eot>\n",
                    "Commands": "<|Commands|>: None<eoc>\n", "Tool Responses": "<|Results|>: None<eor>\n"}
        row = moss_row(EXCHANGES, self.PLUGIN_TURN)
        row["chat"]["turn_2"] = moss_turn(*EXCHANGES[1], thinking)
        template = tmp_path / "tools.jinja"
        template.write_text(TOOL_TEMPLATE, encoding="utf-8")
        path = write_jsonl(tmp_path / "moss.jsonl", [row])
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            code, segments, _ = preview(tiny_model_dir, tmp_path, capsys, path, "--chat_template", str(template))
        call = as_json({"name": "Search", "arguments": {"input": "尤克里里 价格"}})
        assert code == 0 and trained_text(segments) == [f"需要查一下尤克里里的价格。<call>{call}</call></s>",
                                                        f"{EXCHANGES[0][1]}</s>", f"{EXCHANGES[1][1]}</s>"]
        assert "用户问练习时间" not in untrained_text(segments)
        assert f"{path}: split 'train': turns with inner thoughts but no command: 1; their thoughts are dropped" \
            in caplog.text

    @pytest.mark.parametrize("fields, reason", [
        ({"Commands": "<|Commands|>: 1. Search(\"尤克里里\")  # 先查价格<eoc>\n"},
         "turn_2 has commands that are not Name(\"argument\")"),
        ({"Tool Responses": "<|Results|>: None<eor>\n"}, "turn_2 has commands but no tool responses"),
        ({"Commands": "<|Commands|>: None<eoc>\n"}, "turn_2 has tool responses but no commands"),
    ])
    def test_a_row_whose_plugin_use_cannot_be_read_is_skipped_and_counted(self, tokenizer, tmp_path, caplog,
                                                                          fields, reason):
        bad = moss_row(EXCHANGES, NO_TOOL_FIELDS)
        bad["chat"]["turn_2"] = moss_turn(*EXCHANGES[1], {**self.PLUGIN_TURN, **fields})
        good = [moss_row(EXCHANGES[:1], self.PLUGIN_TURN), moss_row(EXCHANGES, NO_TOOL_FIELDS)]
        path = write_jsonl(tmp_path / "moss.jsonl", [good[0], bad, good[1], bad])
        saved, tokenizer.chat_template = tokenizer.chat_template, TOOL_TEMPLATE
        try:
            with caplog.at_level(logging.INFO, logger="qlorakit.data"):
                rows = tokenized_rows(path, tokenizer)
            assert rows == tokenized_rows(write_jsonl(tmp_path / "good.jsonl", good), tokenizer)
        finally:
            tokenizer.chat_template = saved
        assert f"{path}: 2 of 4 rows of split 'train' skipped, unreadable (rows 2, 4); row 2: {reason}" in caplog.text

    def test_a_file_of_unreadable_rows_is_refused(self, tiny_model_dir, tmp_path, capsys):
        turn = {**self.PLUGIN_TURN, "Tool Responses": "<|Results|>: None<eor>\n"}
        path = write_jsonl(tmp_path / "moss.jsonl", [moss_row(EXCHANGES[:1], turn)] * 2)
        code, _, error = preview(tiny_model_dir, tmp_path, capsys, path, "--chat_template", "guanaco")
        assert code == 2 and error == (f"error: {path}: no row of split 'train' could be read; row 1: turn_1 has "
                                       "commands but no tool responses: 'Search(\"尤克里里 价格\")'")
