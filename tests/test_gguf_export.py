"""qlora-merge-adapter --gguf on tiny models: the GGUF file read back by transformers computes the
merged model's logits, encodes as its tokenizer does and carries the trained chat template;
unsupported bases are refused before merging."""

import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO_ROOT, make_random_adapter, run_python
from qlorakit.cli.make_tiny_model import make_tiny_model
from qlorakit.cli.merge_adapter import merge_adapter
from qlorakit.gguf_export import GGUF_FILE, byte_level_splitting, regex_splittings, tokenizer_refusal
from qlorakit.trained_template import template_record, write_template_record

MERGE = os.path.join(REPO_ROOT, "scripts", "merge_adapter.py")
PROMPTS = ["### Human: What is rain?### Assistant:", "### Human: Name a colour.### Assistant: Blue"]
TEXTS = ["Hello world", "### Human: What is rain?### Assistant:", "  two spaces\nnew line, ünïcödé 123 [PAD] </s>"]
TRAINED_TEMPLATE = "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{% endfor %}"
F16_TOLERANCE = 1e-2
# Measured largest logit gaps on the tiny LLaMA (README "Export"): q8_0 0.045 with this random adapter
# (logits up to 1.2) and 0.051 after the 5-step demo training (logits up to 3.1); f16 0.0015 and 0.0016.
Q8_0_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def chat_adapter_dir(random_adapter_dir, tmp_path_factory):
    """The random adapter with a record of the chat template it was trained with."""
    path = str(tmp_path_factory.mktemp("chat-adapter") / "adapter_model")
    shutil.copytree(random_adapter_dir, path)
    write_template_record(path, template_record("roles", TRAINED_TEMPLATE))
    return path


@pytest.fixture(scope="module")
def merged_f16(tiny_model_dir, chat_adapter_dir, tmp_path_factory):
    """Merged in fp32 with an f16 GGUF, as a user runs it; the command's stdout beside the folder."""
    output = str(tmp_path_factory.mktemp("merged-f16") / "merged")
    result = run_python([MERGE, "--base_model", tiny_model_dir, "--adapter", chat_adapter_dir, "--output", output,
                         "--dtype", "fp32", "--gguf"])
    return output, result.stdout


@pytest.fixture(scope="module")
def merged_q8_0(tiny_model_dir, chat_adapter_dir, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("merged-q8_0") / "merged")
    merge_adapter(tiny_model_dir, chat_adapter_dir, output, dtype="float32", gguf_type="q8_0")
    return output


def gguf_alone(merged_dir, tmp_path):
    """A folder holding only the merged folder's GGUF file, so that nothing else is read."""
    folder = tmp_path / "gguf-only"
    folder.mkdir(parents=True)
    shutil.copy(os.path.join(merged_dir, GGUF_FILE), folder / GGUF_FILE)
    return str(folder)


def logits_of(model, tokenizer):
    tokenizer.padding_side = "left"
    with torch.no_grad():
        return model.eval()(**tokenizer(PROMPTS, return_tensors="pt", padding=True)).logits


def logits(model_dir, tokenizer_dir=None, **kwargs):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs)
    return logits_of(model, AutoTokenizer.from_pretrained(tokenizer_dir or model_dir))


def gguf_gap(merged_dir, tmp_path):
    """Largest logit difference between the merged folder and its GGUF file read back alone."""
    from_gguf = logits(gguf_alone(merged_dir, tmp_path), tokenizer_dir=merged_dir, gguf_file=GGUF_FILE)
    return (from_gguf - logits(merged_dir)).abs().max().item()


class TestGgufFile:
    def test_f16_logits_equal_the_merged_model(self, merged_f16, tmp_path):
        assert gguf_gap(merged_f16[0], tmp_path) < F16_TOLERANCE

    def test_the_adapter_is_in_the_exported_weights(self, tiny_model_dir, merged_f16, tmp_path):
        from qlorakit.inference_model import load_for_inference

        base = logits_of(*load_for_inference(tiny_model_dir, bits=16, compute_dtype=torch.float32))
        from_gguf = logits(gguf_alone(merged_f16[0], tmp_path), tokenizer_dir=merged_f16[0], gguf_file=GGUF_FILE)
        assert (from_gguf - base).abs().max().item() > 10 * F16_TOLERANCE

    def test_q8_0_logits_within_the_documented_bound_at_half_the_size(self, merged_f16, merged_q8_0, tmp_path):
        assert gguf_gap(merged_q8_0, tmp_path) < Q8_0_TOLERANCE
        sizes = [os.path.getsize(os.path.join(folder, GGUF_FILE)) for folder in (merged_q8_0, merged_f16[0])]
        assert sizes[0] < 0.6 * sizes[1]

    def test_tokenizer_encodes_the_same_ids(self, merged_f16, tmp_path):
        merged = AutoTokenizer.from_pretrained(merged_f16[0])
        from_gguf = AutoTokenizer.from_pretrained(gguf_alone(merged_f16[0], tmp_path), gguf_file=GGUF_FILE)
        assert [from_gguf(text)["input_ids"] for text in TEXTS] == [merged(text)["input_ids"] for text in TEXTS]
        special = ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id")
        assert [getattr(from_gguf, name) for name in special] == [getattr(merged, name) for name in special]

    def test_the_trained_chat_template_is_in_the_file(self, merged_f16, tmp_path):
        from_gguf = AutoTokenizer.from_pretrained(gguf_alone(merged_f16[0], tmp_path), gguf_file=GGUF_FILE)
        assert from_gguf.chat_template == TRAINED_TEMPLATE

    def test_llama_cpp_names_and_keys(self, merged_f16):
        from gguf import GGUFReader

        reader = GGUFReader(os.path.join(merged_f16[0], GGUF_FILE))
        names = {tensor.name for tensor in reader.tensors}
        assert {"token_embd.weight", "blk.0.attn_q.weight", "blk.3.ffn_down.weight", "output_norm.weight",
                "output.weight"} <= names
        assert {"llama.context_length", "llama.attention.head_count_kv", "llama.rope.freq_base",
                "tokenizer.ggml.model", "tokenizer.ggml.merges", "tokenizer.chat_template"} <= set(reader.fields)

    def test_the_command_says_what_it_wrote(self, merged_f16):
        line = merged_f16[1].strip().splitlines()[-1]
        assert line.startswith(f"GGUF (f16) -> {os.path.join(merged_f16[0], GGUF_FILE)}: 39 tensors (30 F16, 9 F32)")


def split_before_byte_level(model_dir, splitting):
    """Give the tiny tokenizer the Split-regex pre-tokenizer that llama.cpp calls `splitting`."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    pattern = {name: regex for regex, name in regex_splittings().items()}[splitting]
    path = os.path.join(model_dir, "tokenizer.json")
    tokenizer = Tokenizer.from_file(path)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.save(path)


@pytest.mark.parametrize("arch, splitting", [("mistral", "llama-bpe"), ("qwen2", "qwen2")])
def test_other_families_and_splittings_read_back_as_merged(arch, splitting, tmp_path):
    model_dir = str(tmp_path / f"tiny-{arch}")
    make_tiny_model(model_dir, arch=arch, num_layers=2)
    split_before_byte_level(model_dir, splitting)
    adapter_dir = make_random_adapter(model_dir, str(tmp_path / "adapter"))
    merged_dir = str(tmp_path / "merged")
    merge_adapter(model_dir, adapter_dir, merged_dir, dtype="float32", gguf_type="f16")
    assert gguf_gap(merged_dir, tmp_path) < F16_TOLERANCE
    merged = AutoTokenizer.from_pretrained(merged_dir)
    from_gguf = AutoTokenizer.from_pretrained(gguf_alone(merged_dir, tmp_path / "tokenizer"), gguf_file=GGUF_FILE)
    assert [from_gguf(text)["input_ids"] for text in TEXTS] == [merged(text)["input_ids"] for text in TEXTS]


class TestRefusals:
    def test_another_family_is_refused_before_merging(self, chat_adapter_dir, tmp_path):
        from transformers import AutoConfig

        base = tmp_path / "gpt-neox"  # a config alone: merging would fail on the missing weights
        AutoConfig.for_model("gpt_neox").save_pretrained(base)
        result = run_python([MERGE, "--base_model", str(base), "--adapter", chat_adapter_dir,
                             "--output", str(tmp_path / "out"), "--gguf"], check=False)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"error: {base}: --gguf writes llama, mistral, qwen2 models, not gpt_neox: merge without --gguf and "
            "convert the merged folder with llama.cpp's own converter"]
        assert not (tmp_path / "out").exists()

    def test_a_sentencepiece_tokenizer_is_refused(self, tiny_model_dir, tmp_path):
        make_tiny_model(str(tmp_path / "spm"), tokenizer_kind="sentencepiece", num_layers=1)
        assert "byte-level BPE" in tokenizer_refusal(AutoTokenizer.from_pretrained(tmp_path / "spm"))
        assert tokenizer_refusal(AutoTokenizer.from_pretrained(tiny_model_dir)) is None

    def test_gguf_type_without_gguf_is_refused(self, tiny_model_dir, chat_adapter_dir, tmp_path):
        result = run_python([MERGE, "--base_model", tiny_model_dir, "--adapter", chat_adapter_dir,
                             "--output", str(tmp_path / "out"), "--gguf_type", "q8_0"], check=False)
        assert result.returncode == 2 and "--gguf_type applies to --gguf" in result.stderr
        assert not (tmp_path / "out").exists()


def test_a_failed_gguf_write_leaves_no_output_folder(tiny_model_dir, chat_adapter_dir, tmp_path, monkeypatch):
    """A full disk while writing the GGUF: one line (exit 2), no merged folder without its file."""
    import errno

    from gguf import GGUFWriter

    from qlorakit.cli.merge_adapter import main
    from qlorakit.errors import run_main

    def disk_full(self, tensor, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(GGUFWriter, "write_tensor_data", disk_full)
    (tmp_path / "runs").mkdir()
    status = run_main(main, ["--base_model", tiny_model_dir, "--adapter", chat_adapter_dir,
                             "--output", str(tmp_path / "runs" / "merged"), "--gguf"])
    assert status == 2 and os.listdir(tmp_path / "runs") == []


def test_splittings_llama_cpp_names():
    """The GPT-2 split of the tiny models' tokenizer, and the Split-regex ones of Llama 3 and Qwen2."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    assert byte_level_splitting({**byte_level, "use_regex": True}) == "gpt-2"
    for pattern, name in regex_splittings().items():
        split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
        steps = [split, {**byte_level, "use_regex": False}]
        assert byte_level_splitting({"type": "Sequence", "pretokenizers": steps}) == name
    assert byte_level_splitting({"type": "Metaspace", "replacement": "\u2581"}) is None


def test_storage_types_and_f16_range():
    """Vectors in f32, rows that do not fill q8_0's 32-weight blocks in f16, and no value f16 cannot hold."""
    from gguf import GGMLQuantizationType as Types

    from qlorakit.errors import ModelError
    from qlorakit.gguf_export import storage_type, stored_bytes

    assert storage_type(torch.ones(64), Types.Q8_0) == Types.F32
    assert [storage_type(torch.ones(4, width), Types.Q8_0) for width in (64, 48)] == [Types.Q8_0, Types.F16]
    with pytest.raises(ModelError, match="beyond f16's range: choose --gguf_type bf16"):
        stored_bytes("blk.0.ffn_down.weight", torch.full((2, 32), 7e4), None, Types.F16)
