"""Truncation counting, length summaries and Firefly's conversations (detection, the firefly template)."""

import json
import logging
import os

import pytest
from datasets import Dataset

from conftest import run_python
from qlorakit import chat_data, data
from qlorakit import preview


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


class TestTruncation:
    def test_each_side_records_the_tokens_it_lost(self, tokenizer):
        text = "one two three four five six seven eight nine ten"
        full = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # bos or eos
        rows = data.tokenize_rows({"input": [text, "hi"], "output": [text, "ok"]}, tokenizer, 7, 5)
        assert rows["source_dropped"] == [full - 7, 0]
        assert rows["target_dropped"] == [full - 5, 0]
        assert rows["target_ids"][0][-1] != tokenizer.eos_token_id  # a cut target keeps no eos
        assert rows["target_ids"][1][-1] == tokenizer.eos_token_id

    def test_cuts_are_counted_in_the_log_and_warned_above_the_share(self, tokenizer, caplog):
        rows = Dataset.from_dict({"input": ["a b c d e f g h i j k l", "hi", "yo", "hey"],
                                  "output": ["ok", "fine", "x y z w v u t s r q p o n m", "sure"]})
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            data.tokenize_dataset(rows, tokenizer, 6, 6, max_truncated_share=0.9)
        info = [r for r in caplog.records if "rows cut" in r.getMessage()]
        assert len(info) == 1 and info[0].levelno == logging.INFO
        assert "2 of 4 rows cut: 1 sources lost" in info[0].getMessage()
        assert "1 targets lost" in info[0].getMessage()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            data.tokenize_dataset(rows, tokenizer, 6, 6, max_truncated_share=0.2)
        warned = [r for r in caplog.records if "rows cut" in r.getMessage()]
        assert warned[0].levelno == logging.WARNING and "above --max_truncated_share 0.2" in warned[0].getMessage()

    def test_length_summary_shows_lengths_before_the_cut(self, tokenizer):
        rows = Dataset.from_dict({"input": ["a b c d e f g h i j k l"] + ["hi"] * 9, "output": ["ok"] * 10})
        tokenized = data.tokenize_dataset(rows, tokenizer, 4, 64)
        length = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        short, longest = str(length("<s>hi")), str(length("<s>a b c d e f g h i j k l"))
        summary = preview.length_summary(tokenized, {"source": 4, "target": 64, "total": 68})
        source_line = next(line for line in summary.splitlines() if line.startswith("source"))
        assert source_line.split()[1:] == [short, short, longest, longest, "4", "1"]


def firefly_oracle(tokenizer, exchanges):
    """<s>q1</s>a1</s>q2</s>a2</s> built piece by piece, answers and their eos trained."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids, mask = [tokenizer.bos_token_id], [0]
    for question, answer in exchanges:
        ids += encode(question) + [tokenizer.eos_token_id]
        mask += [0] * (len(encode(question)) + 1)
        ids += encode(answer) + [tokenizer.eos_token_id]
        mask += [1] * (len(encode(answer)) + 1)
    return ids, mask


EXCHANGES = [("你好，请介绍一下你自己。", "我是一个人工智能助手，很高兴为你服务。"),
             ("天空为什么是蓝色的？", "因为瑞利散射：短波长的蓝光被大气散射得更多。"),
             ("谢谢", "不客气！")]


class TestFirefly:
    def row(self):
        return {"conversation_id": 7, "category": "Brainstorming",
                "conversation": [{"human": q, "assistant": a} for q, a in EXCHANGES]}

    def test_rows_are_detected_and_read_as_conversations(self):
        assert data.detect_format(["conversation_id", "category", "conversation"], "f.jsonl") == "firefly"
        messages = data.format_firefly(self.row())["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3
        assert messages[3]["content"] == EXCHANGES[1][1]

    def test_a_broken_exchange_is_named(self):
        with pytest.raises(chat_data.ConversationError, match="message 2"):
            data.format_firefly({"conversation": [{"human": "q"}]})

    @pytest.mark.parametrize("turns", [1, 3])
    def test_firefly_template_matches_the_hand_built_layout(self, tokenizer, turns):
        template, _ = chat_data.resolve_chat_template("firefly", tokenizer)
        messages = data.format_firefly({"conversation": [{"human": q, "assistant": a}
                                                         for q, a in EXCHANGES[:turns]]})["messages"]
        ids, mask = chat_data.encode_conversation(tokenizer, template, messages)
        assert (ids, mask) == firefly_oracle(tokenizer, EXCHANGES[:turns])

    def test_preview_of_a_firefly_file(self, tiny_model_dir, tmp_path):
        path = tmp_path / "firefly.jsonl"
        path.write_text(json.dumps(self.row(), ensure_ascii=False) + "\n", encoding="utf-8")
        result = run_python(["qlora.py", "--model_name_or_path", tiny_model_dir, "--dataset", str(path),
                             "--chat_template", "firefly", "--preview_data", "1",
                             "--output_dir", str(tmp_path / "out")])
        assert "dataset format firefly" in result.stderr
        expected = "".join(f"{q}</s>[[{a}</s>]]" for q, a in EXCHANGES)
        assert f"<s>{expected}" in result.stdout
        assert "=== lengths of 1 training rows, in tokens ===" in result.stdout


ALPACA_ROWS = [{"instruction": f"Say {n}.", "input": "", "output": f"{n}"} for n in range(6)]


class TestFiles:
    def args(self, dataset, **values):
        from qlorakit.config import DataArguments
        return DataArguments(dataset=dataset, **values)

    def formatted(self, dataset, **values):
        names = dataset.split(",")
        return [data.load_formatted(name, self.args(dataset, **values), None) for name in names]

    def test_parquet_and_gzipped_json_lines(self, tmp_path):
        import gzip

        import pandas as pd
        pd.DataFrame(ALPACA_ROWS).to_parquet(tmp_path / "rows.parquet")
        with gzip.open(tmp_path / "rows.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in ALPACA_ROWS)
        for name in ("rows.parquet", "rows.jsonl.gz"):
            [(formatted, format_name)] = self.formatted(str(tmp_path / name))
            assert format_name == "alpaca" and formatted["train"]["output"] == [str(n) for n in range(6)]

    def test_rows_under_a_key_are_suggested_then_read(self, tmp_path):
        path = tmp_path / "squad_like.json"
        path.write_text(json.dumps({"version": "1.0", "data": ALPACA_ROWS}))
        with pytest.raises(data.DataError, match="pass --dataset_field data"):
            self.formatted(str(path))
        [(formatted, _)] = self.formatted(str(path), dataset_field="data")
        assert len(formatted["train"]) == 6
        with pytest.raises(data.DataError, match="no list of rows under the key 'rows'"):
            self.formatted(str(path), dataset_field="rows")

    def test_several_sources_are_mixed_with_their_own_formats(self, tmp_path, caplog):
        first, second = tmp_path / "a.json", tmp_path / "b.jsonl"
        first.write_text(json.dumps(ALPACA_ROWS))
        second.write_text("".join(json.dumps({"input": f"q{n}", "output": f"a{n}"}) + "\n" for n in range(4)))
        dataset = f"{first},{second}"
        with caplog.at_level(logging.INFO, logger="qlorakit.data"):
            mixed = data.mix_sources([(name, *pair) for name, pair in zip(dataset.split(","), self.formatted(dataset))])
        assert sorted(mixed["train"]["output"]) == sorted([str(n) for n in range(6)] + [f"a{n}" for n in range(4)])
        assert mixed["train"]["output"][:6] != [str(n) for n in range(6)]  # shuffled
        assert f"{first} (alpaca, 6 rows), {second} (input-output, 4 rows)" in caplog.text

    def test_conversations_and_input_output_rows_do_not_mix(self, tmp_path):
        chat = tmp_path / "chat.jsonl"
        chat.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                 {"role": "assistant", "content": "Hello"}]}) + "\n")
        alpaca = tmp_path / "a.json"
        alpaca.write_text(json.dumps(ALPACA_ROWS))
        dataset = f"{chat},{alpaca}"
        with pytest.raises(data.DataError, match="mixes conversations"):
            data.mix_sources([(name, *pair) for name, pair in zip(dataset.split(","), self.formatted(dataset))])


@pytest.mark.parametrize("row", [
    {"conversation": [{"human": "你好", "assistant": "你好！"}]},
    {"conversation_id": 1, "meta_instruction": "你是一个人工智能助手。\n", "num_turns": 1,
     "chat": {"turn_1": {"Human": "<|Human|>: 你好<eoh>\n", "MOSS": "<|MOSS|>: 你好！<eom>\n"}}},
], ids=["firefly", "moss"])
def test_the_bloom_firefly_recipe_previews_on_the_tiny_model(tiny_model_dir, tmp_path, row):
    """The recipe's flags parse and render Firefly rows, and MOSS-003 rows as they are, with the firefly
    layout (preview: no model load)."""
    import subprocess
    import sys

    from conftest import REPO_ROOT
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    result = subprocess.run([os.path.join(REPO_ROOT, "scripts", "finetune_bloom_firefly.sh"),
                             "--model_name_or_path", tiny_model_dir, "--preview_data", "1", "--bf16", "False"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHON": sys.executable, "DATASET": str(path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "<s>你好</s>[[你好！</s>]]" in result.stdout
