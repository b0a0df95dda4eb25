"""bos/eos follow the model config when a checkpoint's tokenizer ships wrong ones."""

import json
import os
import shutil

import pytest
from transformers import AutoConfig, AutoTokenizer

from qlorakit.data import tokenize_rows
from qlorakit.tokenizer import align_special_tokens, load_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def mislabelled_checkpoint(tiny_model_dir, directory, bos, eos, **config_changes):
    """A copy of the tiny checkpoint's config and tokenizer, its tokenizer saved with wrong bos/eos."""
    for name in TOKENIZER_FILES + ("config.json",):
        shutil.copy(os.path.join(tiny_model_dir, name), directory)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.bos_token, tokenizer.eos_token = bos, eos
    tokenizer.save_pretrained(directory)
    if config_changes:
        config_path = os.path.join(directory, "config.json")
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
        with open(config_path, "w", encoding="utf-8") as handle:
            json.dump({**config, **config_changes}, handle)
    return str(directory)


@pytest.mark.parametrize("bos, eos", [("</s>", "<s>"), ("<unk>", "<unk>")])
def test_wrong_bos_and_eos_take_the_config_ids(tiny_model_dir, bos, eos):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.bos_token, tokenizer.eos_token = bos, eos
    config = AutoConfig.from_pretrained(tiny_model_dir)
    align_special_tokens(tokenizer, config)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (config.bos_token_id, config.eos_token_id) == (1, 2)
    row = tokenize_rows({"input": ["Name a colour."], "output": ["Blue."]}, tokenizer, 64, 64)
    assert row["source_ids"][0][0] == 1 and row["target_ids"][0][-1] == 2


def test_a_llama_checkpoint_with_a_mislabelled_tokenizer_loads_corrected(tiny_model_dir, tmp_path):
    path = mislabelled_checkpoint(tiny_model_dir, tmp_path, bos="<unk>", eos="<s>")
    shipped = AutoTokenizer.from_pretrained(path)
    assert (shipped.bos_token_id, shipped.eos_token_id) == (0, 1)
    tokenizer = load_tokenizer(path)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<s>", "</s>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)


def test_config_ids_that_name_no_single_token_leave_the_tokenizer_alone(tiny_model_dir, tmp_path):
    """An eos list (several stop tokens) or an id past the vocabulary says nothing about one token."""
    path = mislabelled_checkpoint(tiny_model_dir, tmp_path, bos="<unk>", eos="<s>",
                                  bos_token_id=10**6, eos_token_id=[2, 0])
    tokenizer = load_tokenizer(path)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<unk>", "<s>")
