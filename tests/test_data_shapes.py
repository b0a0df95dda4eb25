"""Rows in the shapes public instruction and chat data comes in, written here (Alpaca with history,
ShareGPT with a system prompt, Dolly, KTO, DPO pairs, hh-rlhf, images): each column is used,
refused in one line, or named in the log, and nothing bad is trained. A new format is one registry
entry (a Dolly format, defined here). MOSS rows and tool calls: test_moss_and_tools.py."""

import json
import logging

import pytest
from datasets import Dataset, DatasetDict

from qlorakit import data
from qlorakit.cli import train as qlora
from qlorakit.collate import IGNORE_INDEX, CausalLMCollator
from qlorakit.data import DataError


def split_of(rows):
    return DatasetDict({"train": Dataset.from_list(rows)})


def formatted(rows, format_name):
    return data.apply_format(split_of(rows), format_name, "rows.jsonl")["train"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def preview(tiny_model_dir, tmp_path, capsys, path, *flags):
    """(exit code, the JSON segments of the first previewed row or None, the last stderr line)."""
    code = qlora.main(["--model_name_or_path", tiny_model_dir, "--dataset", path, "--output_dir", str(tmp_path),
                       "--preview_data", "1", "--preview_format", "json", *flags])
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith('{"segments"')]
    return code, json.loads(lines[0])["segments"] if lines else None, (captured.err.strip().splitlines() or [""])[-1]


def trained_text(segments):
    return ["".join(s["text"]) for s in segments if s["trained"]]


def untrained_text(segments):
    return "".join(s["text"] for s in segments if not s["trained"])


SHAREGPT_WITH_SYSTEM = {"id": "c1", "system": "你是一个乐于助人的助手。",
                        "conversations": [{"from": "human", "value": "天空为什么是蓝色的？"},
                                          {"from": "gpt", "value": "因为瑞利散射。"}]}
ALPACA_WITH_HISTORY = {"instruction": "那么夏天呢？", "input": "", "output": "夏天很热。",
                       "history": [["冬天冷吗？", "冬天很冷。"], ["春天呢？", "春天温暖。"]]}
DOLLY = {"instruction": "Name a river in China.", "context": "长江 is the longest river in Asia.",
         "response": "The Yangtze (长江).", "category": "closed_qa"}


class TestColumnMapping:
    def test_dolly_hint_names_the_closest_format_and_the_mapping(self):
        with pytest.raises(DataError, match=r"closest: alpaca \(has instruction; lacks output\): try "
                                            r"--dataset_format alpaca --dataset_columns output=response,input=context"):
            data.resolve_format("dolly.jsonl", None, list(DOLLY))

    def test_dolly_loads_with_the_mapping_and_names_the_unused_column(self, tiny_model_dir, tmp_path, capsys,
                                                                      caplog):
        path = write_jsonl(tmp_path / "dolly.jsonl", [DOLLY] * 3)
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            code, segments, _ = preview(tiny_model_dir, tmp_path, capsys, path, "--dataset_format", "alpaca",
                                        "--dataset_columns", "input=context,output=response")
        assert code == 0 and "### Input:\n长江 is the longest" in untrained_text(segments)
        assert trained_text(segments)[0].startswith("The Yangtze (长江).")
        assert "columns not used by format alpaca: category" in caplog.text

    def test_a_yaml_config_maps_columns(self, tiny_model_dir, tmp_path, capsys):
        path = write_jsonl(tmp_path / "dolly.jsonl", [DOLLY] * 2)
        config = tmp_path / "run.yaml"
        config.write_text(f"model_name_or_path: {tiny_model_dir}\ndataset: {path}\noutput_dir: {tmp_path}\n"
                          "dataset_format: alpaca\ndataset_columns: {input: context, output: response}\n"
                          "preview_data: 1\npreview_format: json\n", encoding="utf-8")
        assert qlora.main([str(config)]) == 0
        segments = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["segments"]
        assert trained_text(segments)[0].startswith("The Yangtze (长江).")

    def test_yaml_mapping_and_bad_mappings(self):
        assert data.parse_column_mapping({"output": "response"}) == {"response": "output"}
        with pytest.raises(DataError, match="no format reads 'answer'"):
            data.parse_column_mapping("answer=response")
        with pytest.raises(DataError, match="no column 'reply'"):
            data.map_columns(split_of([DOLLY]), {"reply": "output"}, "dolly.jsonl")


def format_dolly(row):
    """Dolly-15k rows: the instruction, then its context (when there is one), is the input; the
    response is the output. docs/ARCHITECTURE.md shows this function and its entry."""
    prompt = f"{row['instruction']}\n\n{row['context']}" if row.get("context") else row["instruction"]
    return {"input": prompt, "output": row["response"]}


DOLLY_FORMAT = data.DataFormat(format_dolly, needs=(("instruction", "response"),), reads=("context",),
                               text=("instruction", "context", "response"))
DOLLY_ROWS = [
    {"instruction": "Which river is the longest in Asia?", "context": "The Yangtze runs 6,300 km to the East China Sea.",
     "response": "The Yangtze.", "category": "closed_qa"},
    {"instruction": "Назови столицу Японии.", "context": "", "response": "Токио (東京).", "category": "open_qa"},
]


class TestANewFormatIsOneEntry:
    """A dataset format is one FORMATS entry (with the function it names): given the Dolly entry
    above and nothing else, Dolly rows are detected from their columns, --dataset_format's help
    lists the format, the response is trained and the instruction is not, and the unused
    `category` column is named in the log."""

    @pytest.fixture
    def dolly_file(self, monkeypatch, tmp_path):
        monkeypatch.setitem(data.FORMATS, "dolly", DOLLY_FORMAT)  # the one entry
        return write_jsonl(tmp_path / "dolly.jsonl", DOLLY_ROWS)

    def test_the_columns_choose_it(self, dolly_file, caplog):
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            assert data.resolve_format(dolly_file, None, list(DOLLY_ROWS[0])) == "dolly"
        assert "dataset format dolly, detected from the columns (instruction, response)" in caplog.text

    def test_the_help_lists_it(self, dolly_file):
        text = data.dataset_format_help()
        assert text.split(". ")[0].split(" | ")[-1] == "dolly"  # the list of names
        assert "instruction + response: dolly" in text  # the columns that choose it

    def test_labels_fall_on_the_response_alone(self, dolly_file, tiny_model_dir):
        from qlorakit.config import DataArguments
        from qlorakit.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tiny_model_dir)
        train, _, _ = data.build_datasets(DataArguments(dataset=dolly_file), tokenizer)
        collator = CausalLMCollator(tokenizer.pad_token_id)
        assert len(train) == len(DOLLY_ROWS)
        for tokenized, row in zip(train, DOLLY_ROWS):
            labels = collator.training_row(tokenized)["labels"]
            source, target = labels[:len(tokenized["source_ids"])], labels[len(tokenized["source_ids"]):]
            assert set(source) == {IGNORE_INDEX} and target == tokenized["target_ids"] and IGNORE_INDEX not in target
            assert tokenizer.decode(tokenized["target_ids"], skip_special_tokens=True).strip() == row["response"]
            assert row["instruction"] in tokenizer.decode(tokenized["source_ids"], skip_special_tokens=True)

    def test_qlora_previews_it_without_a_format_flag(self, dolly_file, tiny_model_dir, tmp_path, capsys, caplog):
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            code = qlora.main(["--model_name_or_path", tiny_model_dir, "--dataset", dolly_file, "--output_dir",
                               str(tmp_path / "out"), "--preview_data", "2", "--preview_format", "json"])
        rows = [json.loads(line)["segments"] for line in capsys.readouterr().out.splitlines()
                if line.startswith('{"segments"')]
        assert code == 0 and len(rows) == len(DOLLY_ROWS)
        for segments, row in zip(rows, DOLLY_ROWS):
            trained, untrained = trained_text(segments), untrained_text(segments)
            assert len(trained) == 1 and trained[0].strip().startswith(row["response"])
            assert row["instruction"] in untrained and row["context"] in untrained
            assert row["instruction"] not in trained[0]
        assert "dataset format dolly, detected from the columns" in caplog.text
        assert "columns not used by format dolly: category\n" in caplog.text  # category alone, context is read


class TestEveryColumnIsUsedOrNamed:
    def test_sharegpt_system_column_is_the_first_turn(self):
        messages = formatted([SHAREGPT_WITH_SYSTEM], "chat")[0]["messages"]
        assert messages[0] == {"role": "system", "content": "你是一个乐于助人的助手。"}

    def test_sharegpt_system_is_rendered_untrained_and_id_is_named(self, tiny_model_dir, tmp_path, capsys, caplog):
        path = write_jsonl(tmp_path / "sharegpt.jsonl", [SHAREGPT_WITH_SYSTEM] * 2)
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            code, segments, _ = preview(tiny_model_dir, tmp_path, capsys, path, "--chat_template", "guanaco")
        assert code == 0 and untrained_text(segments).startswith("<s>你是一个乐于助人的助手。")
        assert "detected from the columns (conversations)" in caplog.text
        assert "columns not used by format chat: id" in caplog.text

    def test_alpaca_history_turns_are_trained_like_chat_turns(self, tiny_model_dir, tmp_path, capsys):
        path = write_jsonl(tmp_path / "history.jsonl", [ALPACA_WITH_HISTORY] * 2)
        code, segments, _ = preview(tiny_model_dir, tmp_path, capsys, path, "--chat_template", "guanaco")
        assert code == 0
        assert [t.split("</s>")[0] for t in trained_text(segments)] == [
            " 冬天很冷。", " 春天温暖。", " 夏天很热。"]
        assert "### Human: 冬天冷吗？" in untrained_text(segments)

    def test_content_part_lists_are_joined_and_images_refused(self):
        row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "你好，"},
                                                         {"type": "text", "text": "世界"}]},
                            {"role": "assistant", "content": [{"type": "text", "text": "你好！"}]}]}
        assert formatted([row], "chat")[0]["messages"][0]["content"] == "你好，世界"
        row["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": "x.png"}})
        with pytest.raises(DataError, match="row 1 of split 'train': message 1 has a 'image_url' part: .*text-only"):
            formatted([row], "chat")

    @pytest.mark.parametrize("row, message", [
        ({"messages": [{"role": "user", "content": "<image>这是谁？"}, {"role": "assistant", "content": "猫。"}],
          "images": ["a.jpg"]}, "column 'images' holds images"),
        ({"messages": [{"role": "user", "content": "<image>这是谁？"}, {"role": "assistant", "content": "猫。"}]},
         "message 1 holds <image>: this trainer is text-only"),
    ])
    def test_media_rows_are_refused_in_one_line(self, row, message):
        with pytest.raises(DataError, match=message):
            formatted([row], "chat")


class TestNothingBadIsTrained:
    @pytest.mark.parametrize("rows, format_name, message", [
        ([{"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": ""}]}], "chat",
         "row 1 of split 'train': message 2 is an empty assistant reply"),
        ([{"conversations": [{"from": "gpt", "value": "我先说。"}, {"from": "human", "value": "好"},
                             {"from": "gpt", "value": "嗯"}]}], "chat",
         "row 1 of split 'train': message 1 is an assistant turn before any user turn"),
        ([{"instruction": "翻译", "input": "cat", "output": "猫"}, {"instruction": "翻译", "input": "dog", "output": " "}],
         "alpaca", "row 2 of split 'train': has an empty output"),
        ([{"text": 12345}], "oasst1", "row 1 of split 'train': field 'text' holds a int \\(12345\\), not text"),
        ([{"prompt": "p", "completion": 7}], "self-instruct", "row 1 of split 'train': field 'completion' holds a int"),
    ])
    def test_bad_rows_are_refused_naming_file_row_and_field(self, rows, format_name, message):
        with pytest.raises(DataError, match=f"rows.jsonl: {message}"):
            formatted(rows, format_name)

    def test_kto_rows_labelled_false_are_skipped_and_counted(self, caplog):
        rows = [{"messages": [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": f"回答{i}"}],
                 "label": i % 2 == 0} for i in range(4)]
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            kept = formatted(rows, "chat")
        assert [row["messages"][1]["content"] for row in kept] == ["回答0", "回答2"]
        assert "2 of 4 rows of split 'train' skipped: their label is false" in caplog.text
        assert "columns not used" not in caplog.text


class TestPreferencePairs:
    DPO_SHAREGPT = {"conversations": [{"from": "human", "value": "推荐一本书。"}],
                    "chosen": {"from": "gpt", "value": "《红楼梦》。"}, "rejected": {"from": "gpt", "value": "不知道。"}}

    @pytest.mark.parametrize("columns", [["conversations", "chosen", "rejected"], ["chosen", "rejected"],
                                         ["prompt", "chosen", "rejected"]])
    def test_detection_refuses_pairs_and_names_hh_rlhf(self, columns):
        with pytest.raises(DataError, match="preference pairs.*--dataset_format hh-rlhf to train on the chosen side"):
            data.resolve_format("pairs.jsonl", None, columns)

    def test_sharegpt_pairs_train_the_chosen_reply(self, caplog):
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            messages = formatted([self.DPO_SHAREGPT], "hh-rlhf")[0]["messages"]
        assert "columns not used by format hh-rlhf: rejected" in caplog.text
        assert messages == [{"role": "user", "content": "推荐一本书。"}, {"role": "assistant", "content": "《红楼梦》。"}]

    def test_message_list_pairs_with_and_without_a_prompt_column(self):
        prompt = [{"role": "user", "content": "2+2?"}]
        chosen = [{"role": "assistant", "content": "4"}]
        with_prompt = formatted([{"prompt": prompt, "chosen": chosen, "rejected": chosen}], "hh-rlhf")
        whole = formatted([{"chosen": prompt + chosen, "rejected": prompt + chosen}], "hh-rlhf")
        assert with_prompt[0]["messages"] == whole[0]["messages"] == [
            {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]

    def test_hh_text_trains_only_the_last_reply(self, tiny_model_dir, tmp_path, capsys):
        chosen = "\n\nHuman: 你好\n\nAssistant: 你好！\n\nHuman: 讲个笑话\n\nAssistant: 好的，这是一个笑话。"
        path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": chosen[:-8]}] * 2)
        code, segments, _ = preview(tiny_model_dir, tmp_path, capsys, path, "--dataset_format", "hh-rlhf")
        assert code == 0 and trained_text(segments) == [" 好的，这是一个笑话。</s>"]
        assert "Assistant: 你好！" in untrained_text(segments)


class TestHintsAndTemplateErrors:
    @pytest.mark.parametrize("columns", [["version", "data"], ["id", "dialogue"]])
    def test_unreadable_shapes_are_not_told_to_pass_a_format(self, columns):
        with pytest.raises(DataError, match="no format reads any of them") as error:
            data.resolve_format("rows.jsonl", None, columns)
        assert "pass --dataset_format" not in str(error.value)

    def test_a_format_never_detected_is_named_when_it_alone_fits(self):
        with pytest.raises(DataError, match="they fit only hh-rlhf, which columns alone do not choose: pass "
                                            "--dataset_format hh-rlhf"):
            data.resolve_format("rows.jsonl", None, ["chosen", "score"])

    def test_ambiguous_columns_list_every_fitting_format(self):
        with pytest.raises(DataError, match="they fit chat and chip2 and hh-rlhf and oasst1; pass --dataset_format "
                                            "chat or chip2 or hh-rlhf or oasst1"):
            data.resolve_format("rows.jsonl", None, ["messages", "text", "chosen"])

    def test_a_template_that_cannot_render_a_system_turn_names_the_file_and_row(self, tiny_model_dir, tmp_path,
                                                                                capsys):
        template = tmp_path / "no_system.jinja"
        template.write_text("{% for m in messages %}{% if m['role'] == 'system' %}"
                            "{{ raise_exception('System role not supported') }}{% endif %}"
                            "{{ m['role'] }}: {{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}"
                            "{% endif %}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
        plain = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
        path = write_jsonl(tmp_path / "chats.jsonl", [plain, SHAREGPT_WITH_SYSTEM])
        code, _, error = preview(tiny_model_dir, tmp_path, capsys, path, "--chat_template", str(template))
        assert code == 2 and "chats.jsonl: row 2: " in error and "System role not supported" in error
