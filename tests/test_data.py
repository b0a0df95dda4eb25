import json

import pytest
from datasets import Dataset, DatasetDict

from conftest import run_python
from qlorakit import data
from qlorakit.data import DataError


class TestFormats:
    def test_alpaca_with_and_without_input(self):
        with_input = data.format_alpaca({"instruction": "Sort these.", "input": "b a", "output": "a b"})
        assert "### Instruction:\nSort these." in with_input["input"]
        assert "### Input:\nb a" in with_input["input"]
        assert with_input["input"].endswith("### Response: ") and with_input["output"] == "a b"
        without = data.format_alpaca({"instruction": "Say hi.", "input": "", "output": "hi"})
        assert "### Input:" not in without["input"]

    def test_chip2_splits_human_and_bot(self):
        row = data.format_chip2({"text": "<human>: What is 2+2?\n<bot>: 4."})
        assert row == {"input": "What is 2+2?", "output": "4."}

    def test_self_instruct_hh_rlhf_oasst1(self):
        assert data.format_self_instruct({"prompt": "p", "completion": "c"}) == {"input": "p", "output": "c"}
        pair = {"chosen": "\n\nHuman: Hi\n\nAssistant: good", "rejected": "\n\nHuman: Hi\n\nAssistant: bad"}
        assert data.format_hh_rlhf(pair) == {"input": "\n\nHuman: Hi\n\nAssistant:", "output": " good"}
        text = "### Human: Hi### Assistant: Hello"
        assert data.format_oasst1({"text": text}) == {"input": "", "output": text}


class TestRegistry:
    def test_builtin_names_keep_the_reference_hub_ids_and_formats(self):
        expected = {
            "alpaca": ("tatsu-lab/alpaca", "alpaca"),
            "alpaca-clean": ("yahma/alpaca-cleaned", "alpaca"),
            "chip2": ("laion/OIG", "chip2"),
            "self-instruct": ("yizhongw/self_instruct", "self-instruct"),
            "hh-rlhf": ("Anthropic/hh-rlhf", "hh-rlhf"),
            "longform": ("akoksal/LongForm", "input-output"),
            "oasst1": ("timdettmers/openassistant-guanaco", "oasst1"),
        }
        assert {k: (v.path, v.format) for k, v in data.HUB_DATASETS.items()} == expected

    def test_hub_names_reach_load_dataset_with_their_ids(self, monkeypatch):
        calls = []
        monkeypatch.setattr(data, "load_dataset", lambda *a, **k: calls.append((a, k)) or "loaded")
        assert data.load_raw_dataset("chip2") == "loaded"
        assert calls[0][0] == ("laion/OIG",) and calls[0][1]["data_files"] == "unified_chip2.jsonl"
        data.load_raw_dataset("self-instruct")
        assert calls[1][1]["name"] == "self_instruct"

    def test_unreachable_hub_is_one_clear_error(self, monkeypatch):
        def offline(*args, **kwargs):
            raise ConnectionError("no network")
        monkeypatch.setattr(data, "load_dataset", offline)
        with pytest.raises(DataError, match="could not load timdettmers/openassistant-guanaco from the hub"):
            data.load_raw_dataset("oasst1")

    def test_format_resolution(self):
        assert data.resolve_format("alpaca-clean", None) == "alpaca"
        assert data.resolve_format("my.jsonl", None, ["input", "output"]) == "input-output"
        assert data.resolve_format("my.jsonl", "oasst1", ["input", "output"]) == "oasst1"
        with pytest.raises(DataError, match="unknown --dataset_format 'vicuna'"):
            data.resolve_format("my.jsonl", "vicuna")


class TestBadInput:
    def test_unknown_dataset_lists_the_known_ones(self):
        with pytest.raises(DataError, match="unknown dataset 'alpacca'.*alpaca-clean"):
            data.check_dataset_name("alpacca")

    def test_missing_file_and_bad_extension(self, tmp_path):
        with pytest.raises(DataError, match="no such file"):
            data.check_dataset_name(str(tmp_path / "missing.jsonl"))
        with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
            data.check_dataset_name(str(tmp_path / "rows.xlsx"))

    def test_malformed_jsonl_names_file_and_line(self, tmp_path):
        path = tmp_path / "rows.jsonl"
        path.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": }\n')
        with pytest.raises(DataError, match=r"rows.jsonl:2: invalid JSON"):
            data.load_raw_dataset(str(path))

    @pytest.mark.parametrize("line, kind", [("[1, 2]", "an array"), ('"only text"', "a string"), ("7", "a number")])
    def test_a_jsonl_line_that_is_not_an_object_is_named(self, tmp_path, line, kind):
        path = tmp_path / "rows.jsonl"
        path.write_text(f'{{"input": "a", "output": "b"}}\n\n{line}\n{{"input": "c", "output": "d"}}\n')
        with pytest.raises(DataError) as raised:
            data.load_raw_dataset(str(path))
        assert str(raised.value) == (f"{path}:3: {kind}, not a JSON object: each line of a JSON-lines file is one "
                                     "row, an object of columns")

    def test_an_item_of_a_json_list_that_is_not_an_object_is_named(self, tmp_path):
        path = tmp_path / "rows.json"
        path.write_text('[\n  {"input": "a",\n   "output": "b"},\n  ["c", "d"],\n  {"input": "e", "output": "f"}\n]\n')
        with pytest.raises(DataError, match=r"rows.json:4: item 2 of the list is an array, not a JSON object \(a row\)$"):
            data.load_raw_dataset(str(path))

    def test_a_cut_json_file_names_the_line_and_column_and_says_it_ends_early(self, tmp_path):
        path = tmp_path / "rows.json"
        path.write_text('[\n  {"instruction": "Name a colour.", "output": "Blue."},\n  {"instruction": "Name a fr')
        with pytest.raises(DataError) as raised:
            data.load_raw_dataset(str(path))
        assert str(raised.value) == (f"{path}:3: invalid JSON (Unterminated string starting at column 19); the file "
                                     "ends before its JSON does: cut short?")

    def test_an_indented_json_object_is_named_at_its_bad_line(self, tmp_path):
        path = tmp_path / "rows.json"
        path.write_text('{\n  "data": [\n    {"input": "a", "output": "b"},\n  ]\n}\n')
        with pytest.raises(DataError, match=r"rows.json:4: invalid JSON \(Expecting value at column 3\)$"):
            data.load_raw_dataset(str(path), field="data")

    def test_only_the_projects_line_reaches_stderr(self, tiny_model_dir, tmp_path):
        """datasets logs its own error, counting rows from 0, before the load fails: it is silenced."""
        path = tmp_path / "rows.jsonl"
        path.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": }\n["e", "f"]\n')
        result = run_python(["qlora.py", "--model_name_or_path", tiny_model_dir, "--dataset", str(path),
                             "--output_dir", str(tmp_path / "out"), "--preview_data", "1"], check=False)
        assert result.returncode == 2
        assert [line for line in result.stderr.splitlines() if "rror" in line] == [
            f"error: {path}:2: invalid JSON (Expecting value at column 26)"]

    def test_rows_missing_a_field_are_named(self, tmp_path):
        path = tmp_path / "rows.jsonl"
        path.write_text("\n".join(json.dumps({"instruction": f"q{i}", "answer": "x"}) for i in range(3)))
        raw = data.load_raw_dataset(str(path))
        with pytest.raises(DataError, match=r"lack the columns instruction \+ output that --dataset_format alpaca"):
            data.apply_format(raw, "alpaca", str(path))

    def test_a_null_value_names_the_row(self):
        raw = DatasetDict({"train": Dataset.from_list([{"input": "a", "output": "b"}, {"input": "c", "output": None}])})
        with pytest.raises(DataError, match="row 2 of split 'train': has no value for 'output'"):
            data.apply_format(raw, "input-output", "rows.jsonl")


def test_local_tsv_and_csv_load(tmp_path):
    (tmp_path / "rows.tsv").write_text("input\toutput\nhello, there\tworld\n")
    (tmp_path / "rows.csv").write_text('input,output\n"a, b",c\n')
    assert data.load_raw_dataset(str(tmp_path / "rows.tsv"))["train"][0] == {"input": "hello, there", "output": "world"}
    assert data.load_raw_dataset(str(tmp_path / "rows.csv"))["train"][0] == {"input": "a, b", "output": "c"}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from qlorakit.tokenizer import load_tokenizer
    return load_tokenizer(tiny_model_dir)


class TestTokenization:
    def test_source_starts_with_bos_and_target_ends_with_eos(self, tokenizer):
        rows = data.tokenize_rows({"input": ["Hello"], "output": ["World"]}, tokenizer, 64, 64)
        assert rows["source_ids"][0][0] == tokenizer.bos_token_id == 1
        assert rows["target_ids"][0][-1] == tokenizer.eos_token_id
        assert rows["length"][0] == len(rows["source_ids"][0]) + len(rows["target_ids"][0])

    def test_each_side_is_truncated_to_its_own_budget(self, tokenizer):
        long_text = "many words " * 50
        rows = data.tokenize_rows({"input": [long_text], "output": [long_text]}, tokenizer, 7, 5)
        assert len(rows["source_ids"][0]) == 7 and len(rows["target_ids"][0]) == 5

    def test_a_cut_target_keeps_no_eos(self, tokenizer):
        """Measured by benchmarks/cut_target_eos.py: an eos on cut targets teaches stopping mid-sentence."""
        rows = data.tokenize_rows({"input": ["q"], "output": ["many words " * 50]}, tokenizer, 64, 5)
        full = tokenizer("many words " * 50, add_special_tokens=False)["input_ids"]
        assert rows["target_ids"][0] == full[:5] and tokenizer.eos_token_id not in rows["target_ids"][0]


class TestSplit:
    class Args:
        def __init__(self, **values):
            self.__dict__.update(values)

    def dataset(self, rows=50):
        return DatasetDict({"train": Dataset.from_list([{"input": str(i), "output": str(i)} for i in range(rows)])})

    def test_hold_out_is_seeded_and_sized(self):
        data_args = self.Args(eval_dataset_size=10, max_eval_samples=None, max_train_samples=None)
        train, evaluation = data.split_train_eval(self.dataset(), data_args, hold_out_eval=True)
        again = data.split_train_eval(self.dataset(), data_args, hold_out_eval=True)[1]
        assert (len(train), len(evaluation)) == (40, 10)
        assert evaluation["input"] == again["input"]

    def test_no_eval_split_without_eval_or_predict(self):
        data_args = self.Args(eval_dataset_size=10, max_eval_samples=None, max_train_samples=5)
        train, evaluation = data.split_train_eval(self.dataset(), data_args, hold_out_eval=False)
        assert evaluation is None and len(train) == 5

    def test_eval_size_larger_than_the_data_is_an_error(self):
        data_args = self.Args(eval_dataset_size=1024, max_eval_samples=None, max_train_samples=None)
        with pytest.raises(DataError, match="--eval_dataset_size 1024 leaves no training rows out of 50"):
            data.split_train_eval(self.dataset(), data_args, hold_out_eval=True)
