"""qlorakit.data_cache: rows cached by datasets are made again when the code that made them changes."""

import json

import pytest
from datasets import load_dataset

from qlorakit import data_cache

SUFFIX = {"text": "!"}  # what add_suffix appends; the tests change it as an edit of the code would


def add_suffix(row):
    return {"text": row["text"] + SUFFIX["text"]}


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in ("un", "deux")), encoding="utf-8")
    # A file-backed dataset: its maps are cached on disk, as in a training run.
    return load_dataset("json", data_files=str(path), cache_dir=str(tmp_path / "cache"))["train"]


def test_plain_map_reads_back_rows_of_the_old_code(rows, monkeypatch):
    """Why map_rows exists: datasets hashes a module's function by name, so a changed function is
    served the rows cached before the change."""
    assert rows.map(add_suffix)["text"] == ["un!", "deux!"]
    monkeypatch.setitem(SUFFIX, "text", "?")
    assert rows.map(add_suffix)["text"] == ["un!", "deux!"]


def test_map_rows_makes_them_again_when_the_code_changes(rows, monkeypatch):
    monkeypatch.setattr(data_cache, "code_fingerprint", lambda: "before")
    assert data_cache.map_rows(rows, add_suffix)["text"] == ["un!", "deux!"]
    monkeypatch.setitem(SUFFIX, "text", "?")
    assert data_cache.map_rows(rows, add_suffix)["text"] == ["un!", "deux!"]  # same code: the cache is used
    monkeypatch.setattr(data_cache, "code_fingerprint", lambda: "after")
    assert data_cache.map_rows(rows, add_suffix)["text"] == ["un?", "deux?"]


def test_the_fingerprint_changes_with_any_module_of_the_package(tmp_path, monkeypatch):
    (tmp_path / "cli").mkdir()
    (tmp_path / "data.py").write_text("A = 1\n")
    (tmp_path / "cli" / "train.py").write_text("B = 1\n")
    monkeypatch.setattr(data_cache, "PACKAGE_DIR", tmp_path)

    def fingerprint():
        data_cache.code_fingerprint.cache_clear()
        return data_cache.code_fingerprint()

    first = fingerprint()
    assert fingerprint() == first
    (tmp_path / "cli" / "train.py").write_text("B = 2\n")
    assert fingerprint() != first
    data_cache.code_fingerprint.cache_clear()


class TestRowsFingerprint:
    ROWS = {"input_ids": [[1, 2, 3], [4, 5], [6]], "length": [3, 2, 1], "input": ["a", "b", "c"]}

    def fingerprint(self, rows=None, **kwargs):
        from datasets import Dataset

        from qlorakit.data_cache import rows_fingerprint

        return rows_fingerprint(Dataset.from_dict(rows or self.ROWS), **kwargs)

    def test_the_same_rows_give_the_same_fingerprint_however_batched(self):
        assert self.fingerprint().startswith("3 rows, sha256 ")
        assert self.fingerprint(batch_size=1) == self.fingerprint(batch_size=2) == self.fingerprint()

    def test_tokens_moved_between_rows_or_rows_reordered_change_it(self):
        moved = {**self.ROWS, "input_ids": [[1, 2], [3, 4, 5], [6]]}
        reordered = {name: values[::-1] for name, values in self.ROWS.items()}
        assert len({self.fingerprint(), self.fingerprint(moved), self.fingerprint(reordered)}) == 3

    def test_text_counts_only_through_its_tokens(self):
        assert self.fingerprint({**self.ROWS, "input": ["x", "y", "z"]}) == self.fingerprint()

    def test_a_selection_reads_as_the_rows_it_holds(self):
        from datasets import Dataset

        from qlorakit.data_cache import rows_fingerprint

        selected = Dataset.from_dict(self.ROWS).select([1, 2])
        assert rows_fingerprint(selected) == self.fingerprint({name: values[1:] for name, values in self.ROWS.items()})
