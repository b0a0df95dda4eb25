"""qlora.py end to end on the tiny model: layout, loss, targets, reload, predict, MMLU, bad input."""

import json
import os

import pytest
import torch

from conftest import run_python
from qlorakit import SAMPLE_DATA_DIR

LLAMA_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
ALPACA = os.path.join(SAMPLE_DATA_DIR, "alpaca_sample.json")
MMLU_DIR = os.path.join(SAMPLE_DATA_DIR, "mmlu_sample")


def quick_flags(model_dir, output_dir, *extra, bf16=True):
    return [
        "qlora.py", "--model_name_or_path", model_dir, "--output_dir", output_dir,
        "--dataset", ALPACA, "--dataset_format", "alpaca", "--use_cpu", "--bf16", str(bf16),
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
        "--source_max_len", "64", "--target_max_len", "64", "--lora_r", "8", "--lora_alpha", "16",
        "--learning_rate", "0.003", "--logging_steps", "1", "--seed", "0", *extra,
    ]


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("run"))
    result = run_python(quick_flags(
        tiny_model_dir, output_dir, "--max_steps", "12", "--save_steps", "6",
        "--do_eval", "--eval_strategy", "steps", "--eval_steps", "6", "--eval_dataset_size", "8",
        "--do_predict", "--max_new_tokens", "6", "--per_device_eval_batch_size", "4",
        "--do_mmlu_eval", "--mmlu_data_dir", MMLU_DIR, "--mmlu_dataset", "mmlu-zs", "--max_mmlu_samples", "16",
    ))
    return output_dir, result.stdout + result.stderr


def test_outputs_sit_where_the_reference_puts_them(trained_run):
    output_dir, _ = trained_run
    for step in (6, 12):
        adapter = os.path.join(output_dir, f"checkpoint-{step}", "adapter_model")
        assert sorted(os.listdir(adapter)) == ["adapter_config.json", "adapter_model.safetensors", "base_loading.json"]
    assert os.path.isfile(os.path.join(output_dir, "completed"))
    metrics = json.load(open(os.path.join(output_dir, "metrics.json")))
    assert {"train_loss", "eval_loss", "predict_runtime"} <= set(metrics)
    assert 50 < metrics["train_peak_memory_mb"] < 8000  # the process's peak RSS on CPU, in MB


def test_lora_targets_exactly_the_seven_projections(trained_run):
    output_dir, _ = trained_run
    config = json.load(open(os.path.join(output_dir, "checkpoint-12", "adapter_model", "adapter_config.json")))
    assert set(config["target_modules"]) == LLAMA_PROJECTIONS
    assert (config["r"], config["lora_alpha"]) == (8, 16)


def test_loss_falls_and_the_report_shows_4bit_weights(trained_run):
    output_dir, log = trained_run
    history = json.load(open(os.path.join(output_dir, "checkpoint-12", "trainer_state.json")))["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < losses[0] - 0.05
    assert "world size: 1" in log and "torch.uint8" in log


def test_mmlu_accuracy_and_loss_are_logged(trained_run):
    output_dir, _ = trained_run
    history = json.load(open(os.path.join(output_dir, "checkpoint-12", "trainer_state.json")))["log_history"]
    mmlu = [entry for entry in history if "mmlu_eval_accuracy" in entry]
    assert len(mmlu) == 2
    assert 0.0 <= mmlu[-1]["mmlu_eval_accuracy"] <= 1.0 and mmlu[-1]["mmlu_loss"] > 0
    assert any(key.startswith("mmlu_eval_accuracy_") for key in mmlu[-1])


def test_predict_writes_predictions_jsonl(trained_run):
    output_dir, _ = trained_run
    rows = [json.loads(line) for line in open(os.path.join(output_dir, "predictions.jsonl"))]
    assert len(rows) == 8
    for row in rows:
        assert row["prediction_with_input"].startswith(row["input"].strip()[:20])
        assert row["input"] not in row["prediction"] and "output" in row


def test_a_completed_run_is_not_trained_again(trained_run, tiny_model_dir):
    output_dir, _ = trained_run
    before = sorted(os.listdir(output_dir))
    result = run_python(quick_flags(tiny_model_dir, output_dir, "--max_steps", "12", "--save_steps", "6"))
    assert "holds a completed run" in result.stderr
    assert sorted(os.listdir(output_dir)) == before


def test_reloaded_adapter_reproduces_the_trained_logits(tiny_model_dir, tmp_path):
    from qlorakit.config import parse_arguments
    from qlorakit.inference_model import load_for_inference
    from qlorakit.train import setup_trainer

    # fp32 compute on both sides, so the comparison is exact up to kernel rounding.
    arguments = parse_arguments(quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "3", "--save_steps", "3",
                                            "--lora_dropout", "0.1", bf16=False)[1:])
    trainer, tokenizer, _ = setup_trainer(arguments)
    trainer.train()
    batch = tokenizer(["### Human: What is rain?### Assistant:"], return_tensors="pt")
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.model(**batch).logits
    reloaded, _ = load_for_inference(tiny_model_dir, adapter=str(tmp_path / "checkpoint-3" / "adapter_model"),
                                     compute_dtype=torch.float32)
    with torch.no_grad():
        again = reloaded(**batch).logits
    torch.testing.assert_close(again, trained, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("flags, adapter", [
    (("--bits", "8"), True),
    (("--bits", "4", "--quant_type", "fp4", "--double_quant", "False", "--bf16", "False", "--fp16"), True),
    (("--bits", "16", "--full_finetune"), False),
])
def test_other_precisions_train_and_save(tiny_model_dir, tmp_path, run_in_process, flags, adapter):
    from qlorakit.cli import train

    run_in_process(train, quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "2", "--save_steps", "2",
                                      *flags)[1:], check=True)
    checkpoint = tmp_path / "checkpoint-2"
    saved = "adapter_model/adapter_model.safetensors" if adapter else "model.safetensors"
    assert (checkpoint / saved).is_file() and (checkpoint / "checkpoint_complete").is_file()


@pytest.mark.parametrize("flags, message", [
    (("--dataset", "alpacca"), "unknown dataset 'alpacca'"),
    (("--dataset", "missing.jsonl"), "missing.jsonl: no such file"),
    (("--bits", "3"), "--bits must be one of"),
    (("--lora_rnk", "8"), "lora_rnk"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_model_dir, tmp_path, run_in_process, flags, message):
    from qlorakit.cli import train

    result = run_in_process(train, quick_flags(tiny_model_dir, str(tmp_path), *flags)[1:])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_a_finished_run_predicts_with_its_own_adapter_config(trained_run, tiny_model_dir, tmp_path, run_in_process):
    """The reference's generate workflow: the same output_dir, --do_train False --do_predict True and
    no LoRA flags (defaults r 64, the run used r 8): the saved adapter is loaded as it was trained."""
    import shutil

    from qlorakit.cli import train

    output_dir, _ = trained_run
    copy = str(tmp_path / "run")
    shutil.copytree(output_dir, copy)
    os.remove(os.path.join(copy, "predictions.jsonl"))
    result = run_in_process(train, ["--model_name_or_path", tiny_model_dir, "--output_dir", copy,
                                    "--dataset", ALPACA, "--dataset_format", "alpaca", "--use_cpu", "--bf16",
                                    "--do_train", "False", "--do_predict", "True", "--eval_dataset_size", "8",
                                    "--per_device_eval_batch_size", "4", "--source_max_len", "64",
                                    "--max_new_tokens", "6"], check=True)
    warnings = [line for line in result.stderr.splitlines() if "was trained with" in line]
    assert len(warnings) == 1 and "lora_r=8 (flags: 64)" in warnings[0] and "lora_alpha" not in warnings[0]
    read = lambda path: [json.loads(line)["prediction"] for line in open(os.path.join(path, "predictions.jsonl"))]
    assert read(copy) == read(output_dir)  # greedy decoding with the same trained adapter


def test_a_sentencepiece_only_checkpoint_trains(tmp_path, run_in_process):
    """Early LLaMA conversions ship tokenizer.model and no tokenizer.json; transformers converts it
    (sentencepiece and protobuf from requirements.txt)."""
    from qlorakit.cli import train
    from test_model import build_tiny

    model_dir = build_tiny("llama", tmp_path / "model", tokenizer_kind="sentencepiece")
    assert sorted(name for name in os.listdir(model_dir) if "token" in name) == ["tokenizer.model",
                                                                                 "tokenizer_config.json"]
    output_dir = str(tmp_path / "run")
    run_in_process(train, quick_flags(model_dir, output_dir, "--max_steps", "2", "--save_steps", "2")[1:], check=True)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token) == (1, 2, "[PAD]")
    assert os.path.isfile(os.path.join(output_dir, "checkpoint-2", "checkpoint_complete"))


def test_predictions_pair_each_generation_with_its_own_row(trained_run):
    """group_by_length (on by default) must not reorder evaluation: rows are matched by position."""
    output_dir, _ = trained_run
    for line in open(os.path.join(output_dir, "predictions.jsonl")):
        row = json.loads(line)
        instruction = row["input"].split("### Instruction:\n")[1][:30]  # sources are cut at 64 tokens
        assert instruction in row["prediction_with_input"]


def test_the_plan_is_printed_before_training_and_the_final_adapter_after(trained_run):
    output_dir, log = trained_run
    rows = 263 - 8  # alpaca_sample.json less the held-out eval rows
    assert (f"plan: 12 steps x 4 rows (4 per device x 1 accumulation x 1 processes) = 48 rows = "
            f"{48 / rows:.1f} epochs of {rows} training rows; adapter -> {output_dir}/checkpoint-12/adapter_model") in log
    assert f"final adapter: {output_dir}/checkpoint-12/adapter_model" in log
    assert os.path.isdir(f"{output_dir}/checkpoint-12/adapter_model")


def test_a_completed_run_asked_to_train_with_other_settings_says_it_trains_nothing(trained_run, tiny_model_dir,
                                                                                   run_in_process):
    from qlorakit.cli import train

    output_dir, _ = trained_run
    before = sorted(os.listdir(output_dir))
    result = run_in_process(train, quick_flags(tiny_model_dir, output_dir, "--max_steps", "12", "--save_steps", "6",
                                               "--learning_rate", "0.001")[1:])
    assert result.returncode == 0
    warning = next(line for line in result.stderr.splitlines() if "holds a completed run trained with" in line)
    assert "learning_rate 0.003 -> 0.001" in warning and "nothing is trained" in warning
    assert sorted(os.listdir(output_dir)) == before

    evaluated = run_in_process(train, quick_flags(tiny_model_dir, output_dir, "--max_steps", "12", "--save_steps",
                                                  "6", "--max_train_samples", "100", "--do_eval",
                                                  "--eval_dataset_size", "8")[1:])
    warning = next(line for line in evaluated.stderr.splitlines() if "holds a completed run trained with" in line)
    assert "max_train_samples None -> 100" in warning and "train_data 255 rows, sha256 " in warning
    assert "-> 100 rows, sha256 " in warning


def test_rerunning_a_finished_run_keeps_its_metrics_and_loads_no_model_for_nothing(tiny_model_dir, tmp_path,
                                                                                   run_in_process, monkeypatch):
    from qlorakit import train as train_module
    from qlorakit.cli import train

    flags = quick_flags(tiny_model_dir, str(tmp_path), "--max_steps", "2", "--save_steps", "2",
                        "--eval_dataset_size", "8")[1:]
    run_in_process(train, flags, check=True)
    trained = json.load(open(tmp_path / "metrics.json"))
    assert trained["train_loss"] > 0 and trained["epoch"] > 0

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "load_model", no_model)
        again = run_in_process(train, flags, check=True)
    assert json.load(open(tmp_path / "metrics.json")) == trained

    run_in_process(train, [*flags, "--do_train", "False", "--do_eval"], check=True)
    evaluated = json.load(open(tmp_path / "metrics.json"))
    assert {key: evaluated[key] for key in trained} == trained  # epoch: the evaluated checkpoint's
    assert evaluated["eval_loss"] > 0
    assert again.returncode == 0
