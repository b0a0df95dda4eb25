"""Chat data: assistant masks against hand-written oracles, truncation, bad rows, format detection,
the preview, and packed against padded loss on conversations."""

import json
import logging

import pytest
import torch
from datasets import Dataset, DatasetDict

from qlorakit import SAMPLE_DATA_DIR, chat_data, data
from qlorakit.chat_data import ConversationError
from qlorakit.cli import train as qlora
from qlorakit.collate import IGNORE_INDEX, CausalLMCollator
from qlorakit.data import DataError
from qlorakit.preview import row_segments

CHAT_SAMPLE = f"{SAMPLE_DATA_DIR}/chat_sample.jsonl"

# A ChatML-style template written for these tests: each turn closes with <|im_end|> and a newline.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The MOSS-style layout <s>q1</s>a1</s>q2</s>a2</s>: no role markers, no generation prompt.
MOSS_TEMPLATE = "<s>{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"
# A template that closes the conversation with eos only at its very end (as some model cards do),
# so a shorter conversation is not a prefix of a longer one.
EOS_AT_END_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "你好，今天吃什么？"},
    {"role": "assistant", "content": "来一碗拉面吧。"},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from qlorakit.tokenizer import load_tokenizer

    loaded = load_tokenizer(tiny_model_dir)
    loaded.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|end|>"]})
    return loaded


def expected_mask(tokenizer, pieces):
    """The oracle: characters marked by hand-written (text, trained) pieces, read per token through
    the tokenizer's offsets; the bos a row starts with is never trained."""
    text = "".join(piece for piece, _ in pieces)
    flags = [trained for piece, trained in pieces for _ in piece]
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(flags[start]) for start, _ in encoding["offset_mapping"]]
    return text, ([0] + mask if encoding["input_ids"][0] != tokenizer.bos_token_id else mask)


def check_against_oracle(tokenizer, template, messages, pieces):
    text, oracle = expected_mask(tokenizer, pieces)
    assert chat_data.render(tokenizer, template, messages) == text
    ids, mask = chat_data.encode_conversation(tokenizer, template, messages)
    assert mask == oracle
    trained_text = tokenizer.decode([t for t, m in zip(ids, mask) if m], clean_up_tokenization_spaces=False)
    assert trained_text == "".join(piece for piece, trained in pieces if trained)
    assert ids[0] == tokenizer.bos_token_id and mask[0] == 0


class TestAssistantMask:
    def test_guanaco_template(self, tokenizer):
        pieces = [("Be brief. ### Human: 你好，今天吃什么？### Assistant:", False), (" 来一碗拉面吧。</s>", True),
                  ("### Human: Name a colour.### Assistant:", False), (" Blue.</s>", True)]
        check_against_oracle(tokenizer, chat_data.GUANACO_TEMPLATE, CONVERSATION, pieces)

    def test_chatml_template_set_on_the_tokenizer(self, tokenizer):
        saved, tokenizer.chat_template = tokenizer.chat_template, CHATML_TEMPLATE
        template, _ = chat_data.resolve_chat_template("tokenizer", tokenizer)
        tokenizer.chat_template = saved
        pieces = [("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n你好，今天吃什么？<|im_end|>\n"
                   "<|im_start|>assistant\n", False), ("来一碗拉面吧。<|im_end|>", True),
                  ("\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n", False),
                  ("Blue.<|im_end|>", True), ("\n", False)]
        check_against_oracle(tokenizer, template, CONVERSATION, pieces)

    def test_jinja_file_in_the_moss_layout(self, tokenizer, tmp_path):
        path = tmp_path / "moss.jinja"
        path.write_text(MOSS_TEMPLATE)
        template, description = chat_data.resolve_chat_template(str(path), tokenizer)
        assert description == str(path)
        pieces = [("<s>你好，今天吃什么？</s>", False), ("来一碗拉面吧。</s>", True), ("Name a colour.</s>", False),
                  ("Blue.</s>", True)]
        check_against_oracle(tokenizer, template, CONVERSATION[1:], pieces)

    def test_template_that_adds_eos_only_at_the_end(self, tokenizer):
        pieces = [("<|user|>\n你好，今天吃什么？<|end|>\n<|assistant|>\n", False), ("来一碗拉面吧。<|end|>", True),
                  ("\n<|user|>\nName a colour.<|end|>\n<|assistant|>\n", False), ("Blue.<|end|>\n</s>", True)]
        check_against_oracle(tokenizer, EOS_AT_END_TEMPLATE, CONVERSATION[1:], pieces)

    def test_a_template_that_rewrites_earlier_turns_is_an_error(self, tokenizer):
        shuffled = "{% for m in messages|reverse %}{{ m['content'] }}|{% endfor %}"
        with pytest.raises(ConversationError, match="assistant message 2 cannot be located"):
            chat_data.find_assistant_spans(tokenizer, shuffled, CONVERSATION[1:3])

    def test_default_is_the_tokenizers_template_else_guanaco(self, tokenizer):
        assert chat_data.resolve_chat_template(None, tokenizer)[0] == tokenizer.chat_template
        saved, tokenizer.chat_template = tokenizer.chat_template, None
        try:
            assert chat_data.resolve_chat_template(None, tokenizer)[0] == chat_data.GUANACO_TEMPLATE
            with pytest.raises(ConversationError, match="the tokenizer has no chat template"):
                chat_data.resolve_chat_template("tokenizer", tokenizer)
        finally:
            tokenizer.chat_template = saved


class TestTruncation:
    messages = [{"role": "user", "content": "Say a word."}, {"role": "assistant", "content": "Tree."},
                {"role": "user", "content": "Another."}, {"role": "assistant", "content": "River."},
                {"role": "user", "content": "One more, please."}, {"role": "assistant", "content": "Mountain."},
                {"role": "user", "content": "Thanks!"}]

    def encode(self, tokenizer, messages):
        return chat_data.encode_conversation(tokenizer, chat_data.GUANACO_TEMPLATE, messages)

    def test_trailing_user_turn_is_dropped_and_fits(self, tokenizer):
        ids, mask, shortened = chat_data.fit_conversation(tokenizer, chat_data.GUANACO_TEMPLATE, self.messages, 1000)
        assert (ids, mask) == self.encode(tokenizer, self.messages[:6]) and not shortened

    def test_whole_turns_are_dropped_from_the_end(self, tokenizer):
        two_exchanges, _ = self.encode(tokenizer, self.messages[:4])
        ids, mask, shortened = chat_data.fit_conversation(tokenizer, chat_data.GUANACO_TEMPLATE, self.messages,
                                                          len(two_exchanges) + 1)
        assert (ids, mask) == self.encode(tokenizer, self.messages[:4]) and shortened

    def test_a_first_exchange_too_long_is_cut(self, tokenizer):
        first, first_mask = self.encode(tokenizer, self.messages[:2])
        ids, mask, shortened = chat_data.fit_conversation(tokenizer, chat_data.GUANACO_TEMPLATE, self.messages,
                                                          len(first) - 1)
        assert (ids, mask, shortened) == (first[:-1], first_mask[:-1], True)

    @pytest.mark.parametrize("template", [chat_data.GUANACO_TEMPLATE, CHATML_TEMPLATE, EOS_AT_END_TEMPLATE])
    def test_the_longest_fitting_prefix_is_kept_at_every_length(self, tokenizer, template):
        """Against a scan over every prefix, longest first, at each max_len from too short to enough."""
        messages = [{"role": role, "content": f"{role} turn {i}: " + "words " * (i % 4)}
                    for i in range(9) for role in ("user", "assistant")]
        prefixes = [chat_data.encode_conversation(tokenizer, template, messages[:end]) for end in range(2, 19, 2)]
        for max_len in range(len(prefixes[0][0]) - 2, len(prefixes[-1][0]) + 2):
            fitting = [prefix for prefix in prefixes if len(prefix[0]) <= max_len]
            ids, mask = fitting[-1] if fitting else (prefixes[0][0][:max_len], prefixes[0][1][:max_len])
            shortened = len(fitting) < len(prefixes)
            assert chat_data.fit_conversation(tokenizer, template, messages, max_len) == (ids, mask, shortened)

    def test_conversations_left_without_assistant_tokens_are_skipped_and_counted(self, tokenizer, caplog):
        rows = Dataset.from_list([{"messages": self.messages[:2]},
                                  {"messages": [{"role": "user", "content": "word " * 80},
                                                {"role": "assistant", "content": "ok"}]}])
        with caplog.at_level(logging.INFO, logger="qlorakit.chat_data"):
            kept = chat_data.tokenize_chat_dataset(rows, tokenizer, chat_data.GUANACO_TEMPLATE, max_len=40)
        assert len(kept) == 1 and kept[0]["messages"] == self.messages[:2]
        assert "1 of 2 conversations longer than 40 tokens" in caplog.text and "1 skipped" in caplog.text


class TestRows:
    def test_sharegpt_roles_are_mapped(self):
        row = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                 {"from": "gpt", "value": "a"}]}
        assert [m["role"] for m in chat_data.normalize_conversation(row)] == ["system", "user", "assistant"]

    @pytest.mark.parametrize("row, message", [
        ({"messages": [{"role": "user", "content": "q"}]}, "has no assistant turn"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
         "message 2 has unknown role 'bot'"),
        ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},
         "message 1 has a int content, not a string"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": None}]},
         "message 2 has a NoneType content"),
    ])
    def test_bad_conversations(self, row, message):
        with pytest.raises(ConversationError, match=message):
            chat_data.normalize_conversation(row)

    def test_text_parts_under_value_are_read_as_under_text(self):
        # LLaMA-Factory's content lists keep a part's text under "value"; it was read as empty text.
        row = {"messages": [{"role": "system", "content": [{"type": "text", "value": "Réponds en français."}]},
                            {"role": "user", "content": [{"type": "text", "value": "Quelle heure"},
                                                         {"type": "text", "text": " est-il ?"}]},
                            {"role": "assistant", "content": [{"type": "text", "value": "Midi."}]}]}
        assert [m["content"] for m in chat_data.normalize_conversation(row)] == [
            "Réponds en français.", "Quelle heure est-il ?", "Midi."]

    def test_a_text_part_without_text_is_one_line(self):
        row = {"messages": [{"role": "user", "content": [{"type": "text", "txt": "q"}]},
                            {"role": "assistant", "content": "a"}]}
        with pytest.raises(ConversationError, match="message 1 has a text part without a string under text or value"):
            chat_data.normalize_conversation(row)


class TestSystemPrompts:
    ROWS = [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}]

    def test_a_template_that_drops_system_prompts_is_counted_in_the_log(self, tokenizer, caplog):
        dataset = Dataset.from_list(self.ROWS)
        with caplog.at_level(logging.WARNING, logger="qlorakit.chat_data"):
            chat_data.tokenize_chat_dataset(dataset, tokenizer, EOS_AT_END_TEMPLATE.replace(
                "{% for m in messages %}", "{% for m in messages if m['role'] != 'system' %}"), 64, source="rows.jsonl")
        assert "rows.jsonl: 1 of 2 conversations have a system prompt that the chat template does not write" in caplog.text

    def test_a_template_that_writes_them_says_nothing(self, tokenizer, caplog):
        with caplog.at_level(logging.WARNING, logger="qlorakit.chat_data"):
            chat_data.tokenize_chat_dataset(Dataset.from_list(self.ROWS), tokenizer, CHATML_TEMPLATE, 64)
        assert "system prompt" not in caplog.text


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def good_row(reply="a"):
    return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": reply}]}


@pytest.mark.parametrize("bad, message", [
    ({"messages": [{"role": "user", "content": "q"}]}, "row 3 of split 'train': has no assistant turn"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]},
     "row 3 of split 'train': message 2 has unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 42}]},
     "row 3 of split 'train': message 2 has a int content, not a string"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": {"text": "a"}}]},
     "row 3 of split 'train': message 2 has a dict content, not a string"),
])
def test_bad_rows_stop_qlora_in_one_line(tiny_model_dir, tmp_path, capsys, bad, message):
    path = write_jsonl(tmp_path / "chats.jsonl", [good_row(), good_row(), bad, good_row()])
    code = qlora.main(["--model_name_or_path", tiny_model_dir, "--dataset", path, "--output_dir", str(tmp_path),
                       "--preview_data", "1"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and error[-1].startswith("error: ") and "chats.jsonl" in error[-1] and message in error[-1]


class TestDetection:
    @pytest.mark.parametrize("columns, expected, deciding", [
        (["messages"], "chat", "messages"), (["conversations", "id"], "chat", "conversations"),
        (["instruction", "input", "output"], "alpaca", "instruction, output"),
        (["prompt", "completion"], "self-instruct", "prompt, completion"), (["text"], "oasst1", "text"),
        (["input", "output"], "input-output", "input, output"),
    ])
    def test_columns_name_the_format(self, columns, expected, deciding, caplog):
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            assert data.resolve_format("rows.jsonl", None, columns) == expected
        logged = [r.getMessage() for r in caplog.records if "detected from the columns" in r.getMessage()]
        assert logged == [f"rows.jsonl: dataset format {expected}, detected from the columns ({deciding}); "
                          "--dataset_format overrides"]

    def test_ambiguous_columns_list_the_columns_and_the_candidates(self):
        with pytest.raises(DataError, match=r"\(messages, text\): they fit chat and chip2 and oasst1; pass --dataset_format"):
            data.resolve_format("rows.jsonl", None, ["messages", "text"])

    def test_unknown_columns_list_every_format(self):
        with pytest.raises(DataError, match=r"\(version, data\): they fit no format and no format reads any of "
                                            r"them.*hh-rlhf: chosen.*input-output: input \+ output without "
                                            r"instruction; chat: messages or conversations.*moss: chat \+ num_turns"):
            data.resolve_format("rows.jsonl", None, ["version", "data"])

    def test_a_hub_id_is_loaded_and_needs_a_train_split(self, monkeypatch):
        calls = []
        monkeypatch.setattr(data, "load_dataset", lambda *a, **k: calls.append(a) or DatasetDict(
            {"train_sft": Dataset.from_list([good_row()])}))
        with pytest.raises(DataError, match="owner/chats: no 'train' split \\(splits: train_sft\\)"):
            data.load_raw_dataset("owner/chats")
        assert calls == [("owner/chats",)]


def sample_rows(tokenizer, count):
    raw = data.load_raw_dataset(CHAT_SAMPLE)
    formatted = data.apply_format(raw, "chat", CHAT_SAMPLE)["train"].select(range(count))
    return chat_data.tokenize_chat_dataset(formatted, tokenizer, chat_data.GUANACO_TEMPLATE, max_len=512)


class TestCollatorAndPreview:
    def test_labels_are_the_assistant_tokens_or_everything_with_train_on_source(self):
        feature = {"input_ids": [1, 5, 6, 7, 2], "assistant_mask": [0, 0, 1, 1, 1]}
        assert CausalLMCollator(0).training_row(feature)["labels"] == [IGNORE_INDEX, IGNORE_INDEX, 6, 7, 2]
        assert CausalLMCollator(0, train_on_source=True).training_row(feature)["labels"] == [1, 5, 6, 7, 2]

    def test_segments_join_to_the_decoded_row_even_inside_a_character(self, tokenizer):
        ids = tokenizer("拉面", add_special_tokens=False)["input_ids"]
        assert len(ids) > 2  # byte-level pieces of two characters
        decode = lambda part: tokenizer.decode(part, clean_up_tokenization_spaces=False)  # noqa: E731
        segments = row_segments(ids, [False, True] + [False] * (len(ids) - 2), decode)
        assert "".join(s["text"] for s in segments) == "拉面"

    def test_preview_json_marks_the_replies(self, tiny_model_dir, tmp_path, capsys):
        code = qlora.main(["--model_name_or_path", tiny_model_dir, "--dataset", CHAT_SAMPLE, "--output_dir",
                           str(tmp_path / "out"), "--chat_template", "guanaco", "--preview_data", "3",
                           "--preview_format", "json"])
        lines = capsys.readouterr().out.splitlines()
        assert code == 0 and len(lines) == 3 and not (tmp_path / "out").exists()
        rows = [json.loads(line) for line in open(CHAT_SAMPLE, encoding="utf-8")][:3]
        for line, row in zip(lines, rows):
            segments = json.loads(line)["segments"]
            assert set(segments[0]) == {"text", "trained"}
            replies = [f" {m['content']}</s>" for m in row["messages"] if m["role"] == "assistant"]
            assert [s["text"] for s in segments if s["trained"]] == replies
            assert "".join(s["text"] for s in segments).startswith("<s>")

    def test_preview_text_brackets_the_trained_text_when_piped(self, tiny_model_dir, tmp_path, capsys):
        code = qlora.main(["--model_name_or_path", tiny_model_dir, "--dataset", CHAT_SAMPLE, "--output_dir",
                           str(tmp_path), "--chat_template", "guanaco", "--preview_data", "1"])
        out = capsys.readouterr().out
        assert code == 0 and out.startswith("=== row 1: ")
        assert "### Assistant:[[ Not at all." in out and "\033[" not in out


def test_padding_free_loss_equals_the_padded_loss_on_conversations(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    features = [{k: row[k] for k in ("input_ids", "assistant_mask")} for row in sample_rows(tokenizer, 3)]
    assert all(0 < sum(f["assistant_mask"]) < len(f["input_ids"]) for f in features)
    with torch.no_grad():
        padded = model(**CausalLMCollator(pad_token_id=0)(features)).loss
        flat_batch = CausalLMCollator(pad_token_id=0, padding_free=True)(features)
        flat = model(**flat_batch).loss
    assert flat_batch["input_ids"].shape[0] == 1
    torch.testing.assert_close(flat, padded, atol=5e-6, rtol=0)


def test_truncation_benchmark_compares_equal_results(capsys):
    import chat_truncation

    chat_truncation.main(["--turns", "3", "12", "--max_len", "160", "--repeats", "1", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert [row["exchanges"] for row in report["rows"]] == [3, 12]
    assert all(0 < row["tokens_kept"] <= 160 and row["scan_ms"] > 0 and row["bisect_ms"] > 0 for row in report["rows"])
