"""The tokenizer of a base with the fixes its checkpoints need (a pad token, LLaMA's special
tokens) and the tokens a run adds (--new_tokens), and the base's embeddings grown to fit it.
"""

import os

from transformers import AutoConfig, AutoTokenizer

from .errors import ArgumentError

DEFAULT_PAD_TOKEN = "[PAD]"


def load_tokenizer(model_name_or_path, padding_side="right", config=None, **kwargs):
    """Tokenizer with a pad token and, for LLaMA, the special tokens its checkpoints expect.
    config: the model's config when the caller has read it already."""
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, padding_side=padding_side, **kwargs)
    config = config or AutoConfig.from_pretrained(model_name_or_path, **kwargs)
    if config.model_type == "llama":
        align_special_tokens(tokenizer, config)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": DEFAULT_PAD_TOKEN})
    return tokenizer


def align_special_tokens(tokenizer, config):
    """Make bos/eos follow the model config: early LLaMA conversions shipped wrong ones (bos must be 1)."""
    for name in ("bos", "eos"):
        token_id = getattr(config, f"{name}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))


def resize_embeddings_for(tokenizer, model):
    """Grow the embeddings to the tokenizer; new rows start at the mean of the old ones.

    The mean keeps a new token's logits ordinary instead of random, which matters only for the
    pad row here (it is masked), but keeps added tokens from derailing the first steps.
    """
    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old_rows:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
        if embedding is None:
            continue
        weight = embedding.weight.data
        weight[old_rows:] = weight[:old_rows].mean(dim=0, keepdim=True)


def read_new_tokens(value):
    """The tokens --new_tokens names: the lines of a text file, or a comma list. Blank entries are
    dropped; a token named twice is refused (its second row would never train)."""
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as handle:
            tokens = [line.strip() for line in handle]
    elif value.endswith(".txt"):
        raise ArgumentError(f"--new_tokens: no such file: {value}")
    else:
        tokens = [token.strip() for token in value.split(",")]
    tokens = [token for token in tokens if token]
    if not tokens:
        raise ArgumentError(f"--new_tokens {value!r} names no token")
    twice = sorted({token for token in tokens if tokens.count(token) > 1})
    if twice:
        raise ArgumentError(f"--new_tokens names {', '.join(twice)} more than once")
    return tokens


def add_new_tokens(tokenizer, tokens):
    """Add tokens to the vocabulary as whole, never-split tokens; returns their ids. A token the
    vocabulary has already is refused in one line: its row is the base's, not a new one to train."""
    vocabulary = tokenizer.get_vocab()
    known = [f"{token} (id {vocabulary[token]})" for token in tokens if token in vocabulary]
    if known:
        raise ArgumentError(f"--new_tokens: already in the tokenizer's vocabulary: {', '.join(known)}; "
                            "list only tokens it does not have")
    tokenizer.add_tokens(tokens)
    return tokenizer.convert_tokens_to_ids(tokens)
