"""An adapter is used on the base it was trained against: base_loading.json, its readers, and the
FP4 case end to end (train, reload, merge --dequantize)."""

import argparse
import dataclasses
import json
import logging
import os

import bitsandbytes as bnb
import pytest
import torch

from conftest import REPO_ROOT, run_python
from qlorakit import SAMPLE_DATA_DIR
from qlorakit import base_loading
from qlorakit.adapter_paths import check_adapter, resolve_adapter
from qlorakit.base_loading import (BaseLoading, add_base_loading_arguments, loading_overrides, read_base_loading,
                                   resolve_base_loading)
from qlorakit.cli import chat, generate, guanaco_generate, merge_adapter
from qlorakit.errors import ModelError

MERGE = os.path.join(REPO_ROOT, "scripts", "merge_adapter.py")
# The inference commands by the script that runs each from a checkout.
COMMANDS = {"eval/generate.py": generate, "examples/guanaco_generate.py": guanaco_generate, "examples/chat.py": chat,
            "scripts/merge_adapter.py": merge_adapter}


class TestResolve:
    def test_flags_override_the_saved_record_one_by_one(self):
        saved = BaseLoading(4, "fp4", False, "float32", "LlamaForCausalLM")
        assert resolve_base_loading(saved) == saved
        assert resolve_base_loading(saved, double_quant=True) == BaseLoading(4, "fp4", True, "float32", "LlamaForCausalLM")
        assert resolve_base_loading(saved, compute_dtype=torch.bfloat16).compute_dtype == "bfloat16"

    def test_without_a_record_the_default_is_nf4_double_quant_bf16(self):
        assert resolve_base_loading(None) == BaseLoading(4, "nf4", True, "bfloat16")

    def test_command_line_flags_default_to_the_record(self):
        parser = argparse.ArgumentParser()
        add_base_loading_arguments(parser)
        assert set(loading_overrides(parser.parse_args([])).values()) == {None}
        args = parser.parse_args(["--bits", "8", "--quant-type", "fp4", "--double_quant", "False"])
        assert loading_overrides(args) == {"bits": 8, "quant_type": "fp4", "double_quant": False, "compute_dtype": None}

    def test_unknown_keys_of_a_newer_record_are_ignored(self, tmp_path):
        (tmp_path / "base_loading.json").write_text(json.dumps({"bits": 8, "from_the_future": 1}))
        assert read_base_loading(str(tmp_path)) == BaseLoading(bits=8)
        assert read_base_loading(str(tmp_path / "missing")) is None


def other_value(field):
    """A value of a BaseLoading field other than its default: another choice of its flag, the other
    bool, twice a number, or a made-up name or config for the fields no flag sets."""
    choices = field.metadata.get(base_loading.FLAG, {}).get("choices")
    if choices:
        return next(choice for choice in choices if choice != field.default)
    if isinstance(field.default, bool):
        return not field.default
    if isinstance(field.default, int):
        return 2 * field.default
    return {"base_config": {"hidden_size": 64}}.get(field.name, f"other-{field.name}")


class TestEveryField:
    """Saving, reading back, flags and conflict checks go over BaseLoading's fields: each field is
    covered here without being named, so a new field is tested as soon as it is added."""

    def test_every_field_is_saved_and_read_back(self, tmp_path):
        record = BaseLoading(**{field.name: other_value(field) for field in dataclasses.fields(BaseLoading)})
        base_loading.write_base_loading(str(tmp_path), record)
        assert read_base_loading(str(tmp_path)) == record

    def test_a_file_without_newer_fields_takes_their_defaults(self, tmp_path):
        (tmp_path / "base_loading.json").write_text(json.dumps({"bits": 8, "quant_type": "fp4"}))
        assert read_base_loading(str(tmp_path)) == BaseLoading(bits=8, quant_type="fp4")

    @pytest.mark.parametrize("field", base_loading.flag_fields(), ids=lambda field: field.name)
    def test_every_flag_field_is_set_by_its_flag_over_the_record(self, field):
        parser = argparse.ArgumentParser()
        add_base_loading_arguments(parser)
        value = other_value(field)
        overrides = loading_overrides(parser.parse_args([f"--{field.name}", str(value)]))
        assert overrides[field.name] == value
        assert getattr(resolve_base_loading(BaseLoading(), **overrides), field.name) == value

    @pytest.mark.parametrize("name", base_loading.trained_settings())
    def test_every_trained_setting_is_compared_and_is_a_qlora_flag(self, name):
        from qlorakit.config import QuantizationArguments
        from qlorakit.run_settings import TRAINING_SETTINGS

        field = next(field for field in dataclasses.fields(BaseLoading) if field.name == name)
        assert base_loading.base_loading_conflicts(BaseLoading(**{name: other_value(field)}), BaseLoading()) == [
            f"{name}={other_value(field)} (flags: {field.default})"]
        flag = next(flag for flag in dataclasses.fields(QuantizationArguments) if flag.name == name)
        assert flag.default == field.default
        assert ("quantization", name) in TRAINING_SETTINGS  # a resume with another value is noticed

    def test_fields_without_a_flag_are_not_compared(self):
        record = BaseLoading(compute_dtype="float32", model_class="GPT2LMHeadModel", base_model="gpt2")
        assert base_loading.base_loading_conflicts(record, BaseLoading()) == []


class TestOneMoreField:
    """Adding a setting to the record is the field and its metadata alone: with one more field
    (block_size, a trained setting with a flag), every reader and writer of the record handles it."""

    @pytest.fixture
    def extended(self, monkeypatch):
        record = dataclasses.make_dataclass(
            "ExtendedLoading",
            [("block_size", int, base_loading.setting(64, trained_by_flag=True, type=int, choices=(32, 64),
                                                      help="quantization block size"))],
            bases=(BaseLoading,), frozen=True)
        monkeypatch.setattr(base_loading, "BaseLoading", record)
        return record

    def test_it_is_a_flag_of_the_inference_commands(self, extended):
        parser = argparse.ArgumentParser()
        add_base_loading_arguments(parser)
        overrides = loading_overrides(parser.parse_args(["--block-size", "32"]))
        assert overrides["block_size"] == 32
        assert resolve_base_loading(None, **overrides) == extended(block_size=32)

    def test_it_is_saved_read_back_and_defaults_in_older_files(self, extended, tmp_path):
        base_loading.write_base_loading(str(tmp_path), extended(block_size=32))
        assert json.loads((tmp_path / "base_loading.json").read_text())["block_size"] == 32
        assert read_base_loading(str(tmp_path)) == extended(block_size=32)
        (tmp_path / "base_loading.json").write_text(json.dumps({"bits": 4}))
        assert read_base_loading(str(tmp_path)).block_size == 64

    def test_training_takes_it_from_the_flag_and_a_checkpoint_keeps_its_own(self, extended, tmp_path):
        from qlorakit.training_model import checkpoint_base_loading, starting_adapter_base_loading

        args = argparse.Namespace(
            quantization=argparse.Namespace(bits=4, quant_type="nf4", double_quant=True, block_size=64),
            training=argparse.Namespace(bf16=False, fp16=False), given=frozenset({"block_size"}))
        assert base_loading.base_loading_for_flags(args.quantization, "float32").block_size == 64
        base_loading.write_base_loading(str(tmp_path), extended(block_size=32))
        assert base_loading.base_loading_conflicts(extended(block_size=32), extended()) == [
            "block_size=32 (flags: 64)"]
        assert checkpoint_base_loading(args, str(tmp_path)).block_size == 32  # a resume loads it as trained
        assert starting_adapter_base_loading(args, str(tmp_path)).block_size == 64  # a given flag wins


class TestOneLoader:
    """Training and inference build the base a record describes through one loader (load_base_weights)."""

    class Loaded(Exception):
        pass

    def test_both_quantize_as_the_record_says(self, tiny_model_dir, monkeypatch):
        from qlorakit import base_model
        from qlorakit.config import parse_arguments
        from qlorakit.inference_model import load_base_for_inference
        from qlorakit.training_model import load_base_model

        configs = []

        def stop_at_the_weights(model_class, name, quantization_config, **kwargs):
            configs.append(quantization_config.to_dict())
            raise self.Loaded

        monkeypatch.setattr(base_model, "load_weights", stop_at_the_weights)
        record = BaseLoading(quant_type="fp4", double_quant=False, compute_dtype="float16")
        with pytest.raises(self.Loaded):
            load_base_for_inference(tiny_model_dir, record)
        args = parse_arguments(["--model_name_or_path", tiny_model_dir, "--output_dir", "unused", "--use_cpu",
                                "--bf16", "False"])  # the flags alone would load NF4 computing in float32
        with pytest.raises(self.Loaded):
            load_base_model(args, loading=record)
        assert configs[0] == configs[1]
        assert (configs[0]["bnb_4bit_quant_type"], configs[0]["bnb_4bit_compute_dtype"]) == ("fp4", "float16")


@pytest.fixture(scope="module")
def fp4_adapter(tiny_model_dir, tmp_path_factory):
    """3 steps on the FP4 (no double quant) tiny base, fp32 compute, by qlora.py's own entry point
    (in this process: the run's files are what the tests read)."""
    from qlorakit.cli import train

    output_dir = tmp_path_factory.mktemp("fp4-run")
    status = train.main(["--model_name_or_path", tiny_model_dir, "--output_dir", str(output_dir),
                         "--dataset", os.path.join(SAMPLE_DATA_DIR, "alpaca_sample.json"), "--dataset_format", "alpaca",
                         "--use_cpu", "--bits", "4", "--quant_type", "fp4", "--double_quant", "False",
                         "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
                         "--source_max_len", "32", "--target_max_len", "32", "--lora_r", "8", "--learning_rate", "0.01",
                         "--max_steps", "3", "--save_steps", "3", "--seed", "0"])
    assert status == 0
    return str(output_dir / "checkpoint-3" / "adapter_model")


def first_projection(model):
    return model.base_model.model.model.layers[0].self_attn.q_proj.base_layer


def test_the_record_says_how_the_base_was_loaded(fp4_adapter):
    record = read_base_loading(fp4_adapter)
    assert dataclasses.replace(record, base_model=None, base_config=None) == BaseLoading(4, "fp4", False, "float32",
                                                                                          "LlamaForCausalLM")


def test_inference_loads_the_recorded_base_and_flags_override_it(tiny_model_dir, fp4_adapter, caplog):
    from qlorakit.inference_model import load_for_inference

    model, _ = load_for_inference(tiny_model_dir, adapter=fp4_adapter)
    weight = first_projection(model).weight
    assert isinstance(weight, bnb.nn.Params4bit) and weight.quant_type == "fp4"
    assert weight.quant_state.nested is False and first_projection(model).compute_dtype == torch.float32
    model, _ = load_for_inference(tiny_model_dir, adapter=fp4_adapter, quant_type="nf4", double_quant=True)
    assert first_projection(model).weight.quant_type == "nf4" and first_projection(model).weight.quant_state.nested
    assert "has no base_loading.json" not in caplog.text


def test_an_adapter_without_a_record_falls_back_with_a_notice(tiny_model_dir, fp4_adapter, tmp_path, caplog):
    from qlorakit.inference_model import load_for_inference

    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / name).write_bytes(open(os.path.join(fp4_adapter, name), "rb").read())
    with caplog.at_level(logging.WARNING):
        model, _ = load_for_inference(tiny_model_dir, adapter=str(tmp_path))
    notices = [r.getMessage() for r in caplog.records if "base_loading.json" in r.getMessage()]
    assert notices == [f"note: {tmp_path} has no base_loading.json; loading the base as "
                       "4-bit nf4 + double quant, bfloat16 compute"]
    assert first_projection(model).weight.quant_type == "nf4"


def test_merge_dequantize_matches_the_fp4_base_it_was_trained_on(tiny_model_dir, fp4_adapter, tmp_path):
    from test_architectures import MATRIX

    merged_dir = str(tmp_path / "merged")
    result = run_python([MERGE, "--base_model", tiny_model_dir, "--adapter", fp4_adapter, "--output", merged_dir,
                         "--dtype", "fp32", "--dequantize"])
    assert "into the dequantized 4-bit fp4 + double quant base" not in result.stdout
    assert "into the dequantized 4-bit fp4 base" in result.stdout
    from qlorakit.inference_model import load_for_inference
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    merged_logits = MATRIX.probe_logits(merged, AutoTokenizer.from_pretrained(merged_dir, padding_side="left"))
    gaps = {}
    for quant_type, double_quant in (("fp4", False), ("nf4", True)):
        model, tokenizer = load_for_inference(tiny_model_dir, adapter=fp4_adapter, quant_type=quant_type,
                                              double_quant=double_quant)
        expected = MATRIX.probe_logits(MATRIX.use_training_kernels(model), tokenizer)
        gaps[quant_type] = (merged_logits - expected).abs().max().item()
    assert gaps["fp4"] < 1e-4
    assert gaps["nf4"] > 100 * gaps["fp4"] and gaps["nf4"] > 1e-2  # the wrong base is measurably wrong


class TestMissingAdapter:
    def test_a_local_directory_needs_peft_adapter_config(self, tmp_path, random_adapter_dir):
        with pytest.raises(ModelError, match="no adapter_config.json there"):
            check_adapter(str(tmp_path))
        check_adapter(random_adapter_dir)
        check_adapter("some-org/some-adapter")  # left to the hub

    @pytest.mark.parametrize("script", ["eval/generate.py", "examples/guanaco_generate.py", "examples/chat.py",
                                        "scripts/merge_adapter.py"])
    def test_every_inference_path_says_it_in_one_line(self, script, tiny_model_dir, tmp_path, run_in_process):
        missing = str(tmp_path / "checkpoint-9" / "adapter_model")
        (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1, "text": "Hi?", "category": "generic"}) + "\n")
        flags = {"eval/generate.py": ["--model", tiny_model_dir, "-q", str(tmp_path / "q.jsonl"), "-o", str(tmp_path / "o")],
                 "scripts/merge_adapter.py": ["--base_model", tiny_model_dir, "--output", str(tmp_path / "merged")]}
        result = run_in_process(COMMANDS[script], [*flags.get(script, ["--model_name_or_path", tiny_model_dir]),
                                                   "--adapter", missing])
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: {missing}: no adapter_config.json there (pass a checkpoint-N/adapter_model directory or a hub id)")

    def test_a_hub_adapter_that_cannot_be_fetched_is_one_line(self, tiny_model_dir, monkeypatch):
        from transformers import AutoModelForCausalLM

        from qlorakit.lora import load_adapter

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        with pytest.raises(ModelError, match="some-org/no-such-adapter: cannot read the adapter config"):
            load_adapter(model, "some-org/no-such-adapter")


class TestRunFolderAsAdapter:
    """--adapter output_dir takes the newest complete checkpoint's adapter and says which."""

    @staticmethod
    def make_run(tmp_path, adapter_dir, complete_steps, torn_steps=()):
        import shutil

        from qlorakit.checkpoints import COMPLETE_MARKER

        for step in (*complete_steps, *torn_steps):
            shutil.copytree(adapter_dir, tmp_path / f"checkpoint-{step}" / "adapter_model")
            if step in complete_steps:
                (tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).write_text("")
        return str(tmp_path)

    def test_the_newest_complete_checkpoint_is_taken_and_named(self, tmp_path, random_adapter_dir, capsys):
        run = self.make_run(tmp_path, random_adapter_dir, complete_steps=(2, 4), torn_steps=(6,))
        assert resolve_adapter(run) == os.path.join(run, "checkpoint-4", "adapter_model")
        assert f"adapter: {run}/checkpoint-4/adapter_model" in capsys.readouterr().err

    def test_a_checkpoint_directory_gives_its_adapter(self, tmp_path, random_adapter_dir):
        run = self.make_run(tmp_path, random_adapter_dir, complete_steps=(3,))
        checkpoint = os.path.join(run, "checkpoint-3")
        assert resolve_adapter(checkpoint) == os.path.join(checkpoint, "adapter_model")

    def test_adapter_directories_and_hub_ids_stay_as_they_are(self, random_adapter_dir):
        assert resolve_adapter(random_adapter_dir) == random_adapter_dir
        assert resolve_adapter("some-org/some-adapter") == "some-org/some-adapter"

    @pytest.mark.parametrize("script", ["eval/generate.py", "examples/guanaco_generate.py", "examples/chat.py",
                                        "scripts/merge_adapter.py"])
    def test_a_run_without_a_complete_checkpoint_is_one_line(self, script, tmp_path, random_adapter_dir,
                                                             run_in_process):
        run = self.make_run(tmp_path / "run", random_adapter_dir, complete_steps=(), torn_steps=(5,))
        model_flag = "--base_model" if "merge" in script else "--model_name_or_path"
        result = run_in_process(COMMANDS[script], [model_flag, "unused", "--adapter", run, "-q", "q", "-o", "o",
                                                   "--output", "o"])
        assert result.returncode == 2
        assert f"{run}: no complete checkpoint in this run folder" in result.stderr.strip().splitlines()[-1]
