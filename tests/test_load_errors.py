"""Model and adapter loading errors: a folder without weights, damaged weights, an adapter whose
weights disagree with its config, and an adapter given another base than it was trained on. Each is
one line (exit 2 from the commands), or one warning line where the load can go on."""

import json
import logging
import os
import shutil

import pytest

from conftest import run_python
from qlorakit import SAMPLE_DATA_DIR
from qlorakit.cli import chat, generate, guanaco_generate, merge_adapter, train
from qlorakit.base_loading import base_difference, check_model_weights, read_base_loading
from qlorakit.errors import ModelError

ALPACA = os.path.join(SAMPLE_DATA_DIR, "alpaca_sample.json")
OTHER_BASE_WARNING = "was trained on the base"
# The commands by the script that runs each from a checkout.
COMMANDS = {"qlora.py": train, "eval/generate.py": generate, "examples/guanaco_generate.py": guanaco_generate,
            "examples/chat.py": chat, "scripts/merge_adapter.py": merge_adapter}


def copy_model(source, destination, leave_out=()):
    """A copy of a model (or adapter) folder without the files named in leave_out."""
    shutil.copytree(source, destination, ignore=lambda folder, names: [n for n in names if n in leave_out])
    return str(destination)


def error_line(result):
    """The one line a command printed on failure, after checking it failed as bad input does."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def other_base_warnings(caplog):
    return [r.getMessage() for r in caplog.records if OTHER_BASE_WARNING in r.getMessage()]


@pytest.fixture(scope="module")
def no_weights_dir(tiny_model_dir, tmp_path_factory):
    """config.json and the tokenizer, no weights: a download that stopped early."""
    return copy_model(tiny_model_dir, tmp_path_factory.mktemp("no-weights") / "model",
                      leave_out=("model.safetensors",))


@pytest.fixture(scope="module")
def other_base_dir(tmp_path_factory):
    """A tiny LLaMA of another width: the adapters of the tiny model do not fit it."""
    from qlorakit.cli.make_tiny_model import make_tiny_model

    path = str(tmp_path_factory.mktemp("narrow-llama"))
    make_tiny_model(path, hidden_size=128)  # scripts/make_tiny_model.py PATH --hidden_size 128
    return path


@pytest.fixture(scope="module")
def other_vocab_dir(tmp_path_factory):
    """A tiny LLaMA of the same width and another vocabulary: the adapters load, silently wrong."""
    from qlorakit.cli.make_tiny_model import make_tiny_model

    path = str(tmp_path_factory.mktemp("other-vocab-llama"))
    make_tiny_model(path, vocab_size=1024)  # scripts/make_tiny_model.py PATH --vocab_size 1024
    return path


@pytest.fixture(scope="module")
def recorded_adapter_dir(tiny_model_dir, tmp_path_factory):
    """An adapter saved by qlora.py's own loading code (untrained): its base_loading.json records the base."""
    from qlorakit.config import parse_arguments
    from qlorakit.tokenizer import load_tokenizer
    from qlorakit.training_model import load_model

    output_dir = tmp_path_factory.mktemp("recorded-run")
    args = parse_arguments(["--model_name_or_path", tiny_model_dir, "--output_dir", str(output_dir),
                            "--dataset", ALPACA, "--use_cpu", "--bf16", "False", "--lora_r", "4"])
    model = load_model(args, load_tokenizer(tiny_model_dir))
    path = str(output_dir / "adapter_model")
    model.save_pretrained(path)
    return path


class TestModelFolderWithoutWeights:
    def test_the_check_refuses_it_and_passes_a_folder_with_weights_or_a_hub_id(self, no_weights_dir, tiny_model_dir):
        with pytest.raises(ModelError, match="no model weights found in this folder"):
            check_model_weights(no_weights_dir)
        check_model_weights(tiny_model_dir)
        check_model_weights("huggyllama/llama-7b")

    def test_qlora_stops_in_one_line(self, no_weights_dir, tmp_path, run_in_process):
        result = run_in_process(train, ["--model_name_or_path", no_weights_dir, "--output_dir", str(tmp_path / "out"),
                                        "--dataset", ALPACA, "--dataset_format", "alpaca", "--use_cpu",
                                        "--max_steps", "1"])
        assert error_line(result) == (f"error: {no_weights_dir}: no model weights found in this folder "
                                      "(no *.safetensors or pytorch_model*.bin)")

    @pytest.mark.parametrize("command", ["eval/generate.py", "examples/guanaco_generate.py", "examples/chat.py",
                                         "scripts/merge_adapter.py"])
    def test_inference_commands_stop_in_one_line(self, command, no_weights_dir, random_adapter_dir, tmp_path,
                                                 run_in_process):
        questions = tmp_path / "questions.jsonl"
        questions.write_text(json.dumps({"question_id": 1, "text": "Hi?"}) + "\n")
        flags = {"eval/generate.py": ["--model_name_or_path", no_weights_dir, "-q", str(questions),
                                      "-o", str(tmp_path / "answers.jsonl")],
                 "scripts/merge_adapter.py": ["--base_model", no_weights_dir, "--adapter", random_adapter_dir,
                                              "--output", str(tmp_path / "merged")]}
        result = run_in_process(COMMANDS[command], flags.get(command, ["--model_name_or_path", no_weights_dir]))
        assert error_line(result).startswith(f"error: {no_weights_dir}: no model weights found in this folder")
        assert not os.path.exists(tmp_path / "merged")


def test_a_truncated_weights_file_is_named_in_one_line(tiny_model_dir, tmp_path):
    from qlorakit.inference_model import load_for_inference

    folder = copy_model(tiny_model_dir, tmp_path / "model")
    weights = os.path.join(folder, "model.safetensors")
    with open(weights, "r+b") as handle:
        handle.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(ModelError) as raised:
        load_for_inference(folder, bits=16, compute_dtype="float32")
    assert f"{weights}: " in str(raised.value) and "(truncated)" in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.fixture(scope="module")
def r_edited_adapter_dir(random_adapter_dir, tmp_path_factory):
    """The random adapter (rank 4) with r edited to 8 in its adapter_config.json."""
    path = copy_model(random_adapter_dir, tmp_path_factory.mktemp("r-edited") / "adapter")
    config_path = os.path.join(path, "adapter_config.json")
    with open(config_path) as handle:
        config = json.load(handle)
    assert config["r"] == 4
    with open(config_path, "w") as handle:
        json.dump({**config, "r": 8}, handle)
    return path


class TestAdapterWeightsThatDoNotMatchItsConfig:
    def test_inference_refuses_it_in_one_line(self, tiny_model_dir, r_edited_adapter_dir):
        from qlorakit.inference_model import load_for_inference

        with pytest.raises(ModelError) as raised:
            load_for_inference(tiny_model_dir, adapter=r_edited_adapter_dir, bits=16, compute_dtype="float32")
        message = str(raised.value)
        assert message.startswith(f"{r_edited_adapter_dir}: its weights do not match its adapter_config.json "
                                  "(size mismatch for ")
        assert "rank 4 in the weights, r 8 in the config" in message and "\n" not in message

    @pytest.mark.parametrize("command", ["examples/guanaco_generate.py", "scripts/merge_adapter.py"])
    def test_commands_stop_in_one_line(self, command, tiny_model_dir, r_edited_adapter_dir, tmp_path, run_in_process):
        base_flag = "--base_model" if command.endswith("merge_adapter.py") else "--model_name_or_path"
        output = ["--output", str(tmp_path / "merged")] if command.endswith("merge_adapter.py") else []
        result = run_in_process(COMMANDS[command], [base_flag, tiny_model_dir, "--adapter", r_edited_adapter_dir,
                                                    *output])
        assert "its weights do not match its adapter_config.json (size mismatch" in error_line(result)
        assert OTHER_BASE_WARNING not in result.stderr  # the right base: only the adapter is wrong


class TestBaseDifference:
    def test_a_copy_elsewhere_is_the_same_base(self):
        fields = {"model_type": "llama", "hidden_size": 256, "vocab_size": 2048}
        assert base_difference("/models/tiny", fields, "/elsewhere/tiny", dict(fields)) is None

    def test_a_config_field_that_differs_is_another_base_even_at_the_same_path(self):
        assert base_difference("/models/tiny", {"model_type": "llama", "vocab_size": 2048}, "/models/tiny",
                               {"model_type": "llama", "vocab_size": 1024}) == "vocab_size 2048 vs 1024"

    def test_without_a_config_to_compare_names_decide(self, tmp_path):
        assert base_difference("org/model", None, "org/model", {"hidden_size": 256}) is None
        assert base_difference("org/model", None, "org/other", {"hidden_size": 256}) is not None
        (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "org/model"}))
        assert base_difference("org/model", None, str(tmp_path), {"hidden_size": 256}) is None
        snapshot = tmp_path / "models--org--model" / "snapshots" / "0123abc"
        snapshot.mkdir(parents=True)
        assert base_difference("org/model", None, str(snapshot), {"hidden_size": 256}) is None

    def test_local_paths_are_compared_resolved(self, tmp_path, monkeypatch):
        (tmp_path / "model").mkdir()
        monkeypatch.chdir(tmp_path)
        assert base_difference(str(tmp_path / "model"), None, "./model", {"hidden_size": 256}) is None


def test_training_records_the_base_as_its_config_says(recorded_adapter_dir, tiny_model_dir):
    record = read_base_loading(recorded_adapter_dir)
    assert record.base_model == os.path.realpath(tiny_model_dir)
    # The tokenizer's added [PAD] grows the loaded model to 2049 rows; the record keeps the base's own 2048.
    assert record.base_config == {"model_type": "llama", "hidden_size": 256, "intermediate_size": 768,
                                  "num_hidden_layers": 4, "vocab_size": 2048}


class TestAnotherBase:
    def test_the_same_base_copied_elsewhere_loads_without_a_warning(self, tiny_model_dir, recorded_adapter_dir,
                                                                    tmp_path, caplog):
        from qlorakit.inference_model import load_for_inference

        copy = copy_model(tiny_model_dir, tmp_path / "copy-of-tiny")
        with caplog.at_level(logging.WARNING):
            load_for_inference(copy, adapter=recorded_adapter_dir)
        assert other_base_warnings(caplog) == []

    def test_a_base_of_the_same_shapes_loads_with_one_warning(self, other_vocab_dir, recorded_adapter_dir,
                                                              tiny_model_dir, caplog):
        from qlorakit.inference_model import load_for_inference

        with caplog.at_level(logging.WARNING):
            load_for_inference(other_vocab_dir, adapter=recorded_adapter_dir)
        assert other_base_warnings(caplog) == [
            f"warning: {recorded_adapter_dir} was trained on the base {os.path.realpath(tiny_model_dir)}, not on "
            f"{other_vocab_dir} (vocab_size 2048 vs 1024)"]

    def test_an_adapter_without_a_record_is_compared_with_the_base_peft_named(self, other_base_dir,
                                                                              random_adapter_dir, caplog):
        """The random adapter has no base_loading.json; its adapter_config.json names the tiny model's folder."""
        from qlorakit.inference_model import load_for_inference

        with caplog.at_level(logging.WARNING), pytest.raises(ModelError) as raised:
            load_for_inference(other_base_dir, adapter=random_adapter_dir)
        assert [w.split(" (")[1] for w in other_base_warnings(caplog)] == ["hidden_size 256 vs 128, "
                                                                          "intermediate_size 768 vs 384)"]
        assert str(raised.value).startswith(f"{random_adapter_dir}: its weights do not fit the base {other_base_dir} "
                                            "(size mismatch for ")

    def test_a_base_named_otherwise_without_a_config_to_compare_warns(self, tiny_model_dir, random_adapter_dir,
                                                                      tmp_path, caplog):
        from qlorakit.inference_model import load_for_inference

        adapter = copy_model(random_adapter_dir, tmp_path / "adapter")
        config_path = os.path.join(adapter, "adapter_config.json")
        with open(config_path) as handle:
            config = json.load(handle)
        with open(config_path, "w") as handle:
            json.dump({**config, "base_model_name_or_path": "org/not-downloaded-here"}, handle)
        with caplog.at_level(logging.WARNING):
            load_for_inference(tiny_model_dir, adapter=adapter)
        assert other_base_warnings(caplog) == [
            f"warning: {adapter} was trained on the base org/not-downloaded-here, not on {tiny_model_dir} "
            "(another name, and no config of the trained base to compare)"]

    def test_merge_warns_then_stops_in_one_line_when_the_shapes_do_not_fit(self, other_base_dir,
                                                                            recorded_adapter_dir, tmp_path):
        result = run_python(["scripts/merge_adapter.py", "--base_model", other_base_dir, "--adapter",
                             recorded_adapter_dir, "--output", str(tmp_path / "merged")], check=False)
        assert error_line(result).startswith(f"error: {recorded_adapter_dir}: its weights do not fit the base "
                                             f"{other_base_dir} (size mismatch for ")
        warnings = [line for line in result.stderr.splitlines() if OTHER_BASE_WARNING in line]
        assert len(warnings) == 1 and other_base_dir in warnings[0] and "hidden_size 256 vs 128" in warnings[0]
        assert not os.path.exists(tmp_path / "merged")


class TestDamagedRecordFiles:
    """The JSON records saved beside adapters and runs, damaged by hand or by the disk: one line
    naming the file, never a traceback."""

    @pytest.mark.parametrize("record", ["base_loading.json", "prompt_template.json"])
    @pytest.mark.parametrize("damage", ['{"bits": 4', "[4, 16]"])
    def test_inference_stops_in_one_line(self, record, damage, tiny_model_dir, recorded_adapter_dir, tmp_path,
                                         run_in_process):
        adapter = copy_model(recorded_adapter_dir, tmp_path / "adapter")
        with open(os.path.join(adapter, record), "w") as handle:
            handle.write(damage)
        result = run_in_process(guanaco_generate, ["--model_name_or_path", tiny_model_dir, "--adapter", adapter,
                                                   "--question", "Hi?", "--max_new_tokens", "2"])
        assert result.returncode == 2
        reason = "invalid JSON" if damage.startswith("{") else "an array, not a JSON object"
        assert error_line(result).startswith(f"error: {os.path.join(adapter, record)}: {reason}")

    def test_a_resume_with_damaged_run_settings_stops_in_one_line(self, tiny_model_dir, tmp_path, run_in_process):
        flags = ["--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path), "--dataset", ALPACA,
                 "--use_cpu", "--max_steps", "2", "--save_steps", "1", "--lora_r", "4",
                 "--source_max_len", "32", "--target_max_len", "32"]
        run_in_process(train, [*flags, "--max_steps", "1"], check=True)
        os.remove(tmp_path / "completed")
        (tmp_path / "run_settings.json").write_text('{"lora_r": 4, "dataset"')
        result = run_in_process(train, flags)
        assert result.returncode == 2
        assert error_line(result).startswith(f"error: {tmp_path / 'run_settings.json'}: invalid JSON")
