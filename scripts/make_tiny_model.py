"""Build a tiny LLaMA-architecture model and a locally trained tokenizer (no download).

The demo, the tests and the CPU benchmark train this model instead of a hub checkpoint. Its
weights are random (seeded), its tokenizer is a byte-level BPE learned from the bundled
example data, so every string encodes and the whole pipeline runs offline in seconds.

    python scripts/make_tiny_model.py OUT_DIR [--hidden_size 256] [--num_layers 4]

Layer sizes are multiples of 64: bitsandbytes' CPU 4-bit kernels need output sizes divisible
by 32 (see shared STACK-NOTES). The tokenizer has no pad token on purpose, like LLaMA's, so the
pad-token path of the loader is exercised; bos is id 1 and eos id 2, as in LLaMA.
"""

import argparse
import glob
import json
import os
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CORPUS = os.path.join(REPO_ROOT, "examples", "data")
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
GUANACO_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}### Human: {{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}### Assistant: {{ message['content'] }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:{% endif %}"
)


def iter_corpus_texts(corpus_dir):
    """Yield every string value of the JSON/JSONL files under corpus_dir, in a fixed order."""
    paths = sorted(glob.glob(os.path.join(corpus_dir, "**", "*.json*"), recursive=True))
    if not paths:
        raise SystemExit(f"error: no .json/.jsonl files to train the tokenizer on in {corpus_dir}")
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        try:
            rows = json.loads(text)
            rows = rows if isinstance(rows, list) else [rows]
        except json.JSONDecodeError:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        for row in rows:
            yield from (value for value in row.values() if isinstance(value, str))


def train_tokenizer(corpus_dir, vocab_size):
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(iter_corpus_texts(corpus_dir), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        chat_template=GUANACO_CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_model(vocab_size, hidden_size, num_layers, seed):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 64),
        num_key_value_heads=max(1, hidden_size // 128),
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--corpus_dir", default=DEFAULT_CORPUS)
    parser.add_argument("--vocab_size", type=int, default=2048)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.hidden_size % 64:
        parser.error("--hidden_size must be a multiple of 64 (4-bit CPU kernels need it)")

    tokenizer = train_tokenizer(args.corpus_dir, args.vocab_size)
    model = build_model(len(tokenizer), args.hidden_size, args.num_layers, args.seed)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny model: {params / 1e6:.1f}M parameters, vocab {len(tokenizer)} -> {args.output_dir}")


if __name__ == "__main__":
    sys.exit(main())
