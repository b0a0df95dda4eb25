"""Greedy generation of a left-padded batch gives each prompt the tokens it gets alone."""

from types import SimpleNamespace

import pytest
import torch

from qlorakit.chat_data import GUANACO_TEMPLATE, render
from qlorakit.collate import CausalLMCollator
from qlorakit.data import tokenize_rows
from qlorakit.inference_model import load_for_inference

# Lengths differ by several tokens, so the shorter prompts carry real left padding.
QUESTIONS = [
    "What is rain?",
    "Give me three tips for keeping houseplants alive through a dark and cold winter.",
    "Name a colour.",
    "Explain in two sentences why the sky looks blue during the day but red at sunset.",
]
NEW_TOKENS = 12


# How far a row's logits may move with the batch shape alone: in fp32 the kernels' tiling moves
# them by ~5e-7. Padding handled wrongly (e.g. padding attended to) moves them by more than 1.
BATCH_SHAPE_NOISE = 1e-4


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir, random_adapter_dir):
    """The 4-bit tiny model with an adapter, loaded as the generation scripts load it.

    fp32 compute: in bf16 a row's logits move by a rounding step (~8e-3) with the batch shape,
    more than the random tiny model's top two logits often differ.
    """
    return load_for_inference(tiny_model_dir, adapter=random_adapter_dir, compute_dtype=torch.float32)


def prompt_ids(tokenizer):
    """bos + prompt token ids, as qlora.py tokenizes the sources it predicts for."""
    prompts = [render(tokenizer, GUANACO_TEMPLATE, [{"role": "user", "content": question}], add_generation_prompt=True)
               for question in QUESTIONS]
    return tokenize_rows({"input": prompts, "output": [""] * len(prompts)}, tokenizer, 256, 1)["source_ids"]


def generate_greedy(model, tokenizer, batch):
    """(new tokens, the logits each was chosen from) per row, up to and including eos."""
    with torch.no_grad():
        output = model.generate(**batch, do_sample=False, max_new_tokens=NEW_TOKENS,
                                pad_token_id=tokenizer.pad_token_id,
                                return_dict_in_generate=True, output_logits=True)
    logits = torch.stack(output.logits, dim=1)
    rows = []
    for row, row_logits in zip(output.sequences[:, batch["input_ids"].shape[1]:].tolist(), logits):
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        rows.append((row, row_logits[: len(row)]))
    return rows


def compared_steps(together, alone):
    """Steps whose contexts are the same in both runs: up to and including the first token that differs."""
    same = 0
    while same < min(len(together), len(alone)) and together[same] == alone[same]:
        same += 1
    return min(same + 1, len(together), len(alone))


def batch_from_collator(tokenizer, sources):
    return CausalLMCollator(tokenizer.pad_token_id, for_generation=True)([{"source_ids": s} for s in sources])


def batch_from_tokenizer(tokenizer, sources):
    """The way eval/generate.py batches: the inference tokenizer pads on its own side."""
    return tokenizer.pad({"input_ids": sources}, return_tensors="pt")


@pytest.mark.parametrize("make_batch", [batch_from_collator, batch_from_tokenizer])
def test_batched_left_padded_generation_equals_one_by_one(model_and_tokenizer, make_batch):
    """Each row of a left-padded batch is generated from the logits it gets alone.

    Tokens are compared up to the first that differs, logits up to and including it: a greedy
    near-tie may flip with the batch-shape noise, after which the two contexts differ.
    """
    model, tokenizer = model_and_tokenizer
    sources = prompt_ids(tokenizer)
    batch = make_batch(tokenizer, sources)
    assert (batch["input_ids"][:, 0] == tokenizer.pad_token_id).sum() >= 2, "the batch must hold left padding"
    together = generate_greedy(model, tokenizer, batch)
    alone = [generate_greedy(model, tokenizer, make_batch(tokenizer, [source]))[0] for source in sources]
    for (tokens, logits), (alone_tokens, alone_logits) in zip(together, alone):
        steps = compared_steps(tokens, alone_tokens)
        assert steps >= 1
        assert (logits[:steps] - alone_logits[:steps]).abs().max() < BATCH_SHAPE_NOISE
    assert all(len(tokens) > 0 for tokens, _ in alone)


def test_the_noise_bound_catches_padding_handled_wrongly(model_and_tokenizer):
    """Without its attention mask a padded row's logits move far beyond BATCH_SHAPE_NOISE."""
    model, tokenizer = model_and_tokenizer
    batch = batch_from_collator(tokenizer, prompt_ids(tokenizer))
    padded = batch["input_ids"][:, 0] == tokenizer.pad_token_id
    with torch.no_grad():
        masked = model(**batch).logits[:, -1]
        unmasked = model(input_ids=batch["input_ids"]).logits[:, -1]
    moved = (masked - unmasked).abs().amax(dim=-1)
    assert (moved[padded] > 100 * BATCH_SHAPE_NOISE).all()


class FixedDecoderModel:
    """Stands in for an encoder-decoder model: generate returns decoder tokens only, never the prompt."""

    def __init__(self, decoder_ids):
        self.config = SimpleNamespace(is_encoder_decoder=True)
        self.device = torch.device("cpu")
        self.decoder_ids = decoder_ids

    def generate(self, input_ids, **kwargs):
        return torch.tensor([self.decoder_ids] * input_ids.shape[0])


def test_seq2seq_generations_keep_every_decoder_token(model_and_tokenizer):
    from qlorakit.cli.generate import generate_batch
    from qlorakit.generation import build_generation_config

    _, tokenizer = model_and_tokenizer
    answer = tokenizer.encode("one two three four five six seven eight nine ten", add_special_tokens=False)
    config = build_generation_config({"max_new_tokens": 16, "do_sample": False})
    prompts = ["A long question with many words in it, longer than the answer's first tokens?"]
    generations = generate_batch(FixedDecoderModel(answer), tokenizer, prompts, config)
    assert generations == [tokenizer.decode(answer, skip_special_tokens=True)]
