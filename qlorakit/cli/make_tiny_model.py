"""Build a tiny random model of a chosen architecture and a locally trained tokenizer (no download).

The demo, the tests and the CPU benchmark train these models instead of hub checkpoints. Their
weights are random (seeded); the tokenizer is learned from the package's sample data
(qlorakit/sample_data, installed with it), so every string encodes and the whole pipeline runs
offline in seconds.

    python scripts/make_tiny_model.py OUT_DIR [--arch llama] [--hidden_size 256] [--num_layers 4]
    python scripts/make_tiny_model.py OUT_DIR --arch t5            # seq2seq, SentencePiece only
    python scripts/make_tiny_model.py OUT_DIR --tokenizer sentencepiece   # like early LLaMA conversions

Layer sizes are multiples of 64: bitsandbytes' CPU 4-bit kernels need output sizes divisible by
32. The byte-level BPE tokenizer has no pad token on purpose, like LLaMA's, so the pad-token path
of the loader is exercised; bos is id 1 and eos id 2, as in LLaMA. `--tokenizer sentencepiece`
writes only a SentencePiece model file (`tokenizer.model`, T5's `spiece.model`) and no
tokenizer.json, as older checkpoints ship them; transformers converts it when loading.
"""

import argparse
import glob
import io
import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedTokenizerFast

from qlorakit import SAMPLE_DATA_DIR
from qlorakit.errors import InputError, run_main

DEFAULT_CORPUS = SAMPLE_DATA_DIR
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
GUANACO_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}### Human: {{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}### Assistant: {{ message['content'] }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:{% endif %}"
)


def decoder_only_sizes(hidden, layers, heads, mlp):
    """The usual spelling (LLaMA, Mistral, Qwen2, Gemma2, Phi-3, GPT-NeoX)."""
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": mlp}


def grouped_query_sizes(hidden, layers, heads, mlp):
    return {**decoder_only_sizes(hidden, layers, heads, mlp), "num_key_value_heads": max(1, heads // 2)}


# Each architecture: (model_type, its config's size arguments from (hidden, layers, heads, mlp
# width), further config values, SentencePiece file name). The families users finetune with
# QLoRA: GPT-NeoX is pythia, the reference's default base; Phi-3 fuses qkv and gate_up; GPT-2
# uses Conv1D instead of Linear; Falcon subclasses Linear; T5 is encoder-decoder.
ARCHITECTURES = {
    "llama": ("llama", grouped_query_sizes, {"max_position_embeddings": 4096}, "tokenizer.model"),
    "gpt-neox": ("gpt_neox", decoder_only_sizes, {}, "tokenizer.model"),
    "bloom": ("bloom", lambda h, n, a, m: {"hidden_size": h, "n_layer": n, "n_head": a}, {}, "tokenizer.model"),
    "opt": ("opt", lambda h, n, a, m: {"hidden_size": h, "num_hidden_layers": n, "num_attention_heads": a,
                                       "ffn_dim": m, "word_embed_proj_dim": h}, {"pad_token_id": None},
            "tokenizer.model"),
    "falcon": ("falcon", lambda h, n, a, m: {"hidden_size": h, "num_hidden_layers": n, "num_attention_heads": a},
               {}, "tokenizer.model"),
    "mistral": ("mistral", grouped_query_sizes, {}, "tokenizer.model"),
    "qwen2": ("qwen2", grouped_query_sizes, {}, "tokenizer.model"),
    "gemma2": ("gemma2", grouped_query_sizes, {"head_dim": 64}, "tokenizer.model"),
    "phi3": ("phi3", decoder_only_sizes, {"pad_token_id": None}, "tokenizer.model"),
    "gpt2": ("gpt2", lambda h, n, a, m: {"n_embd": h, "n_layer": n, "n_head": a}, {}, "tokenizer.model"),
    "t5": ("t5", lambda h, n, a, m: {"d_model": h, "num_layers": n, "num_heads": a, "d_kv": 64, "d_ff": m},
           {"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}, "spiece.model"),
}
SEQ2SEQ_ARCHITECTURES = ("t5",)


def iter_corpus_texts(corpus_dir):
    """Yield every string value of the JSON/JSONL files under corpus_dir, in a fixed order."""
    paths = sorted(glob.glob(os.path.join(corpus_dir, "**", "*.json*"), recursive=True))
    if not paths:
        raise InputError(f"no .json/.jsonl files to train the tokenizer on in {corpus_dir}; pass --corpus_dir DIR")
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
    """A byte-level BPE tokenizer (tokenizer.json), bos <s> = 1, eos </s> = 2, no pad token."""
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


def train_sentencepiece(corpus_dir, vocab_size, seq2seq):
    """A SentencePiece unigram model (bytes). Ids follow the family: T5 pad 0 / eos 1 / unk 2 and
    no bos; LLaMA unk 0 / bos 1 / eos 2 and no pad. Byte fallback keeps every string encodable."""
    import sentencepiece

    ids = {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1} if seq2seq else \
        {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter_corpus_texts(corpus_dir), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, byte_fallback=True, minloglevel=2, **ids)
    return model.getvalue()


def write_sentencepiece_tokenizer(output_dir, arch, corpus_dir, vocab_size):
    """Only the SentencePiece file and a tokenizer_config.json; returns the loaded tokenizer's size."""
    from transformers import AutoTokenizer

    model_type, _, _, file_name = ARCHITECTURES[arch]
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, file_name), "wb") as handle:
        handle.write(train_sentencepiece(corpus_dir, vocab_size, arch in SEQ2SEQ_ARCHITECTURES))
    with open(os.path.join(output_dir, "tokenizer_config.json"), "w", encoding="utf-8") as handle:
        json.dump({"model_max_length": 4096}, handle)
    # The class comes from the model type, as for a checkpoint that ships config.json beside it.
    AutoConfig.for_model(model_type).save_pretrained(output_dir)
    return len(AutoTokenizer.from_pretrained(output_dir))


def build_model(vocab_size, hidden_size, num_layers, seed, arch="llama", dtype=None, **config_values):
    """A seeded random model, the one builder of the tests, the demo and the benchmarks: heads of
    64, an MLP 3x as wide as the model, an untied head; ``config_values`` override any of that
    (e.g. ``intermediate_size=11008, num_key_value_heads=32`` for LLaMA-7B's shapes). ``dtype``
    builds the weights in that dtype directly (a 7B model in fp32 first would need 27 GB)."""
    model_type, sizes, extra, _ = ARCHITECTURES[arch]
    heads = max(1, hidden_size // 64)
    values = {"bos_token_id": 1, "eos_token_id": 2, **sizes(hidden_size, num_layers, heads, hidden_size * 3), **extra,
              **config_values}
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, tie_word_embeddings=False, **values)
    torch.manual_seed(seed)
    auto_class = AutoModelForSeq2SeqLM if arch in SEQ2SEQ_ARCHITECTURES else AutoModelForCausalLM
    return auto_class.from_config(config, **({"dtype": dtype} if dtype else {}))


def make_tiny_model(output_dir, arch="llama", tokenizer_kind=None, hidden_size=256, num_layers=4,
                    vocab_size=2048, corpus_dir=DEFAULT_CORPUS, seed=0):
    """Write the model and its tokenizer to output_dir; returns the model."""
    tokenizer_kind = tokenizer_kind or ("sentencepiece" if arch in SEQ2SEQ_ARCHITECTURES else "bpe")
    if tokenizer_kind == "sentencepiece":
        vocab_rows = write_sentencepiece_tokenizer(output_dir, arch, corpus_dir, vocab_size)
    else:
        tokenizer = train_tokenizer(corpus_dir, vocab_size)
        tokenizer.save_pretrained(output_dir)
        vocab_rows = len(tokenizer)
    model = build_model(vocab_rows, hidden_size, num_layers, seed, arch)
    model.save_pretrained(output_dir)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="llama")
    parser.add_argument("--tokenizer", choices=("bpe", "sentencepiece"),
                        help="bpe (tokenizer.json; default) or sentencepiece (default for t5)")
    parser.add_argument("--corpus_dir", default=DEFAULT_CORPUS,
                        help="JSON/JSONL files whose string values train the tokenizer (default: the package's sample data)")
    parser.add_argument("--vocab_size", type=int, default=2048)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.hidden_size % 64:
        parser.error("--hidden_size must be a multiple of 64 (4-bit CPU kernels need it)")

    model = make_tiny_model(args.output_dir, args.arch, args.tokenizer, args.hidden_size, args.num_layers,
                            args.vocab_size, args.corpus_dir, args.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny {args.arch}: {params / 1e6:.1f}M parameters, vocab {model.config.vocab_size} -> {args.output_dir}")


def console_main():
    """The ``qlora-make-tiny-model`` command."""
    return run_main(main)
