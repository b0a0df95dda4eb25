"""benchmarks/cut_target_eos.py: the two arms differ only in the last token of cut targets, the limit cuts
exactly the long answers, and generations are classed by how they end."""

import random

import cut_target_eos as bench
import pytest

from qlorakit.data import tokenize_rows


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from qlorakit.tokenizer import load_tokenizer
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def rows():
    return bench.make_rows(bench.SUBJECTS, 60, random.Random(0))


def test_the_limit_fits_short_answers_and_cuts_every_long_one(tokenizer, rows):
    limit = bench.fitting_target_len(rows, tokenizer)
    batch = tokenize_rows({"input": [r["input"] for r in rows], "output": [r["output"] for r in rows]},
                          tokenizer, 64, limit)
    assert [dropped > 0 for dropped in batch["target_dropped"]] == [r["sentences"] == 6 for r in rows]


def test_the_arms_differ_only_in_the_last_token_of_cut_targets(tokenizer, rows):
    limit = bench.fitting_target_len(rows, tokenizer)
    shipped = bench.tokenized(rows, tokenizer, limit, eos_on_cut=False)
    with_eos = bench.tokenized(rows, tokenizer, limit, eos_on_cut=True)
    eos = tokenizer.eos_token_id
    for row, (source, target), (other_source, other_target) in zip(rows, shipped, with_eos):
        assert source == other_source and len(target) == len(other_target) and target[:-1] == other_target[:-1]
        assert (target[-1] == eos, other_target[-1] == eos) == ((True, True) if row["sentences"] < 6 else (False, True))


def test_generations_are_classed_by_how_they_end(tokenizer):
    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    eos = [tokenizer.eos_token_id]
    assert bench.outcome(ids(" The cook buys the lamp.") + eos + ids(" more"), tokenizer) == \
        ("stopped_complete", "The cook buys the lamp.")
    assert bench.outcome(ids(" The cook buys the") + eos, tokenizer)[0] == "stopped_mid_sentence"
    assert bench.outcome(ids(" The cook buys the lamp."), tokenizer)[0] == "ran_to_max_new_tokens"
