"""The recipe scripts in scripts/*.sh: the paper's hyperparameters, and two real steps on the tiny model.

Each script is launched as a user would (from another working directory, flags appended last);
the two-step runs switch MMLU and evaluation off and shrink batch and lengths by trailing flags.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from qlorakit import SAMPLE_DATA_DIR

SCRIPTS = os.path.join(REPO_ROOT, "scripts")
ALPACA = os.path.join(SAMPLE_DATA_DIR, "alpaca_sample.json")

# script -> (default base model, learning rate, LoRA dropout), as the QLoRA paper and its scripts give them
GUANACO_RECIPES = {
    "finetune_guanaco_7b.sh": ("huggyllama/llama-7b", "0.0002", "0.1"),
    "finetune_guanaco_13b.sh": ("huggyllama/llama-13b", "0.0002", "0.05"),
    "finetune_guanaco_33b.sh": ("huggyllama/llama-30b", "0.0001", "0.05"),
    "finetune_guanaco_65b.sh": ("huggyllama/llama-65b", "0.0001", "0.05"),
    "finetune_llama2_guanaco_7b.sh": ("meta-llama/Llama-2-7b-hf", "0.0002", "0.1"),
}
GUANACO_SHARED = {
    "dataset": "oasst1", "lora_r": "64", "lora_alpha": "16", "lora_modules": "all", "bits": "4",
    "quant_type": "nf4", "double_quant": True, "bf16": True, "max_steps": "1875", "eval_steps": "187",
    "source_max_len": "16", "target_max_len": "512", "lr_scheduler_type": "constant", "warmup_ratio": "0.03",
    "adam_beta2": "0.999", "max_grad_norm": "0.3", "group_by_length": True, "seed": "0", "do_mmlu_eval": True,
    "mmlu_data_dir": os.path.join(REPO_ROOT, "data", "mmlu"),
}
FINETUNE_SCRIPTS = [*GUANACO_RECIPES, "finetune.sh"]
TWO_STEP_FLAGS = [
    "--dataset", ALPACA, "--dataset_format", "alpaca", "--use_cpu", "--max_steps", "2", "--save_steps", "2",
    "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--source_max_len", "16",
    "--target_max_len", "32", "--do_eval", "False", "--eval_strategy", "no", "--do_mmlu_eval", "False",
    "--dataloader_num_workers", "0", "--logging_steps", "1",
]


def start_script(name, *flags, cwd, env=None):
    """Start scripts/NAME from cwd as a user would, with PYTHON set to this interpreter."""
    return subprocess.Popen(
        [os.path.join(SCRIPTS, name), *flags], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
    )


def run_script(name, *flags, cwd, env=None):
    """Run scripts/NAME to its end; fail with its output. Returns its stderr (where qlora.py logs)."""
    process = start_script(name, *flags, cwd=cwd, env=env)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, f"{name} failed ({process.returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return stderr


def parse_flags(argv):
    """qlora.py flags as a dict, last value winning as in argparse; a flag without a value is True."""
    flags, index = {}, 0
    while index < len(argv):
        name = argv[index][2:]
        if index + 1 < len(argv) and not argv[index + 1].startswith("--"):
            flags[name], index = argv[index + 1], index + 2
        else:
            flags[name], index = True, index + 1
    return flags


@pytest.fixture
def launched_flags(tmp_path):
    """Run a script with a stand-in PYTHON that records its arguments; returns (qlora.py path, flags)."""
    recorder = tmp_path / "record-argv"
    recorder.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGV_FILE"\n')
    recorder.chmod(0o755)

    def launch(name, *flags, env=None):
        argv_file = tmp_path / "argv.txt"
        run_script(name, *flags, cwd=tmp_path, env={"PYTHON": str(recorder), "ARGV_FILE": str(argv_file), **(env or {})})
        argv = argv_file.read_text().splitlines()
        return argv[0], parse_flags(argv[1:])

    return launch


class TestGuanacoHyperparameters:
    @pytest.mark.parametrize("name", GUANACO_RECIPES)
    def test_launches_qlora_with_the_paper_recipe(self, launched_flags, name):
        model, learning_rate, dropout = GUANACO_RECIPES[name]
        program, flags = launched_flags(name)
        assert program == os.path.join(REPO_ROOT, "qlora.py")
        assert {key: flags.get(key) for key in GUANACO_SHARED} == GUANACO_SHARED
        assert (flags["model_name_or_path"], flags["learning_rate"], flags["lora_dropout"]) == (model, learning_rate, dropout)
        assert int(flags["per_device_train_batch_size"]) * int(flags["gradient_accumulation_steps"]) == 16

    @pytest.mark.parametrize("name", GUANACO_RECIPES)
    def test_the_size_specific_values_stand_verbatim_in_the_script(self, name):
        model, learning_rate, dropout = GUANACO_RECIPES[name]
        text = open(os.path.join(SCRIPTS, name)).read()
        for expected in (model, f"--learning_rate {learning_rate}", f"--lora_dropout {dropout}", "qlora_common.sh", '"$@"'):
            assert expected in text

    def test_the_shared_values_stand_verbatim_in_the_common_file(self):
        text = open(os.path.join(SCRIPTS, "qlora_common.sh")).read()
        for flag in ("--dataset oasst1", "--lora_r 64", "--lora_alpha 16", "--max_steps 1875", "--eval_steps 187",
                     "--source_max_len 16", "--target_max_len 512", "--adam_beta2 0.999", "--max_grad_norm 0.3",
                     "--seed 0", "--warmup_ratio 0.03", "--lr_scheduler_type constant", "--quant_type nf4"):
            assert flag in text

    def test_user_flags_and_environment_win(self, launched_flags):
        _, flags = launched_flags("finetune_guanaco_65b.sh", "--learning_rate", "0.5", "--output_dir", "mine",
                                  env={"MODEL": "/models/llama-65b"})
        assert (flags["learning_rate"], flags["output_dir"], flags["model_name_or_path"]) == ("0.5", "mine", "/models/llama-65b")


@pytest.fixture(scope="module")
def recipe_runs(tiny_model_dir, tmp_path_factory):
    """Two steps of every finetune script on the tiny model: {script: output_dir}.

    The runs go side by side (one thread each): most of a run is interpreter start-up and loading.
    """
    elsewhere = str(tmp_path_factory.mktemp("elsewhere"))
    output_dirs = {name: str(tmp_path_factory.mktemp(name.replace(".sh", ""))) for name in FINETUNE_SCRIPTS}
    processes = {
        name: start_script(name, "--model_name_or_path", tiny_model_dir, "--output_dir", output_dir, *TWO_STEP_FLAGS,
                           cwd=elsewhere, env={"OMP_NUM_THREADS": "1"})
        for name, output_dir in output_dirs.items()
    }
    failures = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        if process.returncode != 0:
            failures[name] = f"{name} failed ({process.returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return output_dirs, failures


@pytest.mark.parametrize("name", FINETUNE_SCRIPTS)
def test_two_steps_on_the_tiny_model_save_an_adapter(recipe_runs, name):
    output_dirs, failures = recipe_runs
    assert name not in failures, failures.get(name)
    output_dir = output_dirs[name]
    checkpoint = os.path.join(output_dir, "checkpoint-2")
    assert sorted(os.listdir(os.path.join(checkpoint, "adapter_model"))) == ["adapter_config.json", "adapter_model.safetensors",
                                                                              "base_loading.json"]
    adapter_config = json.load(open(os.path.join(checkpoint, "adapter_model", "adapter_config.json")))
    training_args = torch.load(os.path.join(checkpoint, "training_args.bin"), weights_only=False)
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (64, 16)
    if name in GUANACO_RECIPES:  # the script's own values reached the trainer (the overrides left them alone)
        _, learning_rate, dropout = GUANACO_RECIPES[name]
        assert adapter_config["lora_dropout"] == float(dropout)
        assert training_args.learning_rate == float(learning_rate)
        assert (training_args.adam_beta2, training_args.max_grad_norm, training_args.seed) == (0.999, 0.3, 0)
        assert training_args.bf16 and training_args.lr_scheduler_type == "constant"


def test_generate_writes_predictions_with_a_finished_runs_adapter(recipe_runs, tiny_model_dir, tmp_path):
    output_dir = str(tmp_path / "run")
    shutil.copytree(recipe_runs[0]["finetune_guanaco_7b.sh"], output_dir)
    log = run_script("generate.sh", "--model_name_or_path", tiny_model_dir, "--output_dir", output_dir,
                        "--dataset", ALPACA, "--dataset_format", "alpaca", "--use_cpu", "--eval_dataset_size", "4",
                        "--source_max_len", "64", "--max_new_tokens", "4", cwd=str(tmp_path))
    assert "holds a completed run" in log and "checkpoint-2" in log
    rows = [json.loads(line) for line in open(os.path.join(output_dir, "predictions.jsonl"))]
    assert len(rows) == 4
    assert all({"input", "output", "prediction", "prediction_with_input"} <= set(row) for row in rows)
