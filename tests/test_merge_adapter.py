"""scripts/merge_adapter.py on the tiny model: merged logits equal base + adapter, safetensors only."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO_ROOT, run_python
from qlorakit import SAMPLE_DATA_DIR
from qlorakit.cli.merge_adapter import merge_adapter

MERGE = os.path.join(REPO_ROOT, "scripts", "merge_adapter.py")
PROMPTS = ["### Human: What is rain?### Assistant:", "### Human: Name a colour.### Assistant: Blue"]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A 3-step adapter trained by qlora.py's own code on the 4-bit tiny model, fp32 compute."""
    from qlorakit.config import parse_arguments
    from qlorakit.train import setup_trainer

    output_dir = tmp_path_factory.mktemp("adapter-run")
    arguments = parse_arguments([
        "--model_name_or_path", tiny_model_dir, "--output_dir", str(output_dir),
        "--dataset", os.path.join(SAMPLE_DATA_DIR, "alpaca_sample.json"), "--dataset_format", "alpaca",
        "--use_cpu", "--bf16", "False", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
        "--source_max_len", "32", "--target_max_len", "32", "--lora_r", "8", "--lora_alpha", "16",
        "--learning_rate", "0.01", "--max_steps", "3", "--save_steps", "3", "--seed", "0",
    ])
    trainer, _, _ = setup_trainer(arguments)
    trainer.train()
    return str(output_dir / "checkpoint-3" / "adapter_model")


def merge(tiny_model_dir, adapter_dir, output, *flags):
    run_python([MERGE, "--base_model", tiny_model_dir, "--adapter", adapter_dir, "--output", str(output), *flags])
    return str(output)


def logits_of(model, tokenizer):
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def reference_logits(tiny_model_dir, adapter_dir, bits):
    """base + adapter, unmerged, as qlorakit loads them for inference (fp32 compute)."""
    from qlorakit.inference_model import load_for_inference

    model, tokenizer = load_for_inference(tiny_model_dir, adapter=adapter_dir, bits=bits, compute_dtype=torch.float32)
    # On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for a bf16 kernel in eval-mode
    # no-grad forwards (absmax rounded to bf16: ~0.015 on these logits). Train mode keeps the
    # dequantize-and-matmul path that training used; the fixture's adapter has no dropout.
    model.train(bits == 4)
    return logits_of(model, tokenizer)


def merged_logits(merged_dir):
    tokenizer = AutoTokenizer.from_pretrained(merged_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    return logits_of(model, tokenizer)


@pytest.fixture(scope="module")
def merged_16bit(tiny_model_dir, adapter_dir, tmp_path_factory):
    return merge(tiny_model_dir, adapter_dir, tmp_path_factory.mktemp("merged-16bit"), "--dtype", "fp32")


@pytest.fixture(scope="module")
def merged_dequantized(tiny_model_dir, adapter_dir, tmp_path_factory):
    """This mode in-process (the command line is exercised by the other merges)."""
    output = str(tmp_path_factory.mktemp("merged-dq"))
    merge_adapter(tiny_model_dir, adapter_dir, output, dtype="float32", dequantize=True)
    return output


class TestMergeIntoOriginalWeights:
    def test_logits_equal_unquantized_base_plus_adapter(self, tiny_model_dir, adapter_dir, merged_16bit):
        expected = reference_logits(tiny_model_dir, adapter_dir, bits=16)
        torch.testing.assert_close(merged_logits(merged_16bit), expected, atol=1e-4, rtol=1e-4)

    def test_the_adapter_is_in_the_weights(self, tiny_model_dir, merged_16bit):
        from qlorakit.inference_model import load_for_inference

        base, tokenizer = load_for_inference(tiny_model_dir, bits=16, compute_dtype=torch.float32)
        gap = (merged_logits(merged_16bit) - logits_of(base, tokenizer)).abs().max().item()
        assert gap > 1e-2, "the trained adapter should change the logits, else the comparison proves nothing"

    def test_only_safetensors_weights_and_the_padded_tokenizer(self, tiny_model_dir, merged_16bit):
        files = os.listdir(merged_16bit)
        weights = [name for name in files if name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt"))]
        assert weights and all(name.endswith(".safetensors") for name in weights)
        assert not any(name.startswith("adapter_") for name in files)
        tokenizer = AutoTokenizer.from_pretrained(merged_16bit)
        config = json.load(open(os.path.join(merged_16bit, "config.json")))
        # the tiny base has no pad token: the merged model carries the added [PAD] row
        assert tokenizer.pad_token == "[PAD]"
        assert config["vocab_size"] == len(tokenizer) == len(AutoTokenizer.from_pretrained(tiny_model_dir)) + 1
        assert "quantization_config" not in config


class TestMergeIntoDequantizedBase:
    def test_logits_equal_4bit_base_plus_adapter(self, tiny_model_dir, adapter_dir, merged_dequantized):
        expected = reference_logits(tiny_model_dir, adapter_dir, bits=4)
        torch.testing.assert_close(merged_logits(merged_dequantized), expected, atol=1e-4, rtol=1e-4)

    def test_differs_from_the_merge_into_original_weights(self, merged_16bit, merged_dequantized):
        # the NF4 rounding error: the two modes are not interchangeable
        gap = (merged_logits(merged_16bit) - merged_logits(merged_dequantized)).abs().max().item()
        assert gap > 1e-3
        assert "quantization_config" not in json.load(open(os.path.join(merged_dequantized, "config.json")))


def test_bf16_output_is_stored_in_bf16(tiny_model_dir, adapter_dir, merged_16bit, tmp_path):
    merged_dir = merge(tiny_model_dir, adapter_dir, tmp_path / "bf16")
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # bf16 rounding of weights and activations; the logits of the tiny model stay within a few 0.01
    torch.testing.assert_close(merged_logits(merged_dir), merged_logits(merged_16bit), atol=0.1, rtol=0.05)


def test_a_directory_without_adapter_config_is_refused(tiny_model_dir, tmp_path):
    result = run_python([MERGE, "--base_model", tiny_model_dir, "--adapter", str(tmp_path), "--output",
                         str(tmp_path / "out")], check=False)
    assert result.returncode == 2 and "no adapter_config.json" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_added_pad_row_is_named_in_the_saved_configs(merged_16bit):
    tokenizer = AutoTokenizer.from_pretrained(merged_16bit)
    config = json.load(open(os.path.join(merged_16bit, "config.json")))
    generation = json.load(open(os.path.join(merged_16bit, "generation_config.json")))
    assert tokenizer.pad_token == "[PAD]" and config["vocab_size"] == len(tokenizer)
    assert config["pad_token_id"] == generation["pad_token_id"] == tokenizer.pad_token_id


def test_a_failed_write_leaves_no_output_folder(tiny_model_dir, adapter_dir, tmp_path, monkeypatch):
    """A full disk while saving: one line (exit 2 through run_main), no half-written model folder."""
    import errno

    from transformers import PreTrainedModel

    from qlorakit.cli.merge_adapter import main

    def disk_full(self, folder, **kwargs):
        os.makedirs(folder, exist_ok=True)  # as save_pretrained does
        with open(os.path.join(folder, "config.json"), "w") as handle:
            handle.write("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    output = tmp_path / "merged"
    from qlorakit.errors import run_main
    status = run_main(main, ["--base_model", tiny_model_dir, "--adapter", adapter_dir, "--output", str(output)])
    assert status == 2
    assert os.listdir(tmp_path) == []


def test_an_output_folder_that_holds_files_is_refused_before_loading(tiny_model_dir, adapter_dir, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = run_python([MERGE, "--base_model", tiny_model_dir, "--adapter", adapter_dir, "--output", str(tmp_path)],
                        check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: --output")
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_generation_config_holds_qlora_decoding_defaults(merged_16bit):
    """Servers that read generation_config.json (transformers, TGI, vLLM) decode as --do_predict did."""
    from transformers import GenerationConfig

    from qlorakit.config import GenerationArguments

    saved = GenerationConfig.from_pretrained(merged_16bit)
    expected = {name: value for name, value in vars(GenerationArguments()).items() if value is not None}
    assert {name: getattr(saved, name) for name in expected} == expected
    config = json.load(open(os.path.join(merged_16bit, "config.json")))
    assert (saved.bos_token_id, saved.eos_token_id, saved.pad_token_id) == \
        (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"])
