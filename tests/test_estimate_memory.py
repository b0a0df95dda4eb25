"""qlora-estimate-memory: qlora.py's own flags and config files in, the estimate out."""

import json
import os
import subprocess

import pytest
from transformers import AutoConfig, HfArgumentParser, LlamaConfig

from conftest import REPO_ROOT, run_python

from qlorakit import memory as em
from qlorakit.cli import estimate_memory as cli
from qlorakit.config import ARGUMENT_CLASSES
from qlorakit.errors import run_main
from qlorakit.model_skeleton import load_shape, preset_shape

SCRIPT = os.path.join(REPO_ROOT, "scripts", "estimate_memory.py")
DEMO_CONFIG = os.path.join(REPO_ROOT, "examples", "configs", "tiny_demo.yaml")
MB = 2**20
# The Guanaco-7B recipe's flags that change memory (docs/MEMORY.md); the rest are qlora.py's defaults.
RECIPE_7B = ["--config", "llama-7b", "--bf16", "--source_max_len", "16", "--target_max_len", "512",
             "--lora_dropout", "0.1"]


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of the command run in this process."""
    status = run_main(cli.main, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def estimate_json(capsys, *argv):
    status, out, err = run_cli(capsys, *argv, "--json")
    assert status == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def recipe_command_line(script):
    """The qlora.py flags a recipe script passes, printed one a line in place of launching Python."""
    result = subprocess.run(["bash", os.path.join(REPO_ROOT, "scripts", script)], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": "printf %s\\n"}, check=True)
    qlora_py, *flags = result.stdout.splitlines()
    assert qlora_py.endswith("qlora.py")
    return flags


def documented_output(path, heading):
    """The first fenced block after the line holding `heading`."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    after = text[text.index(heading):]
    return after.split("```\n", 2)[1].strip()


def test_every_qlora_flag_is_read_by_name():
    qlora_flags = {action.dest for action in HfArgumentParser(ARGUMENT_CLASSES)._actions if action.option_strings}
    values = cli.parse_flags(["--config", "llama-7b"])
    assert qlora_flags - {"help"} <= set(values)
    # qlora.py's defaults, including the activation-checkpointing switch under its reference name
    assert values["gradient_checkpointing"] is True and values["bf16"] is False
    assert values["source_max_len"] == 1024 and values["lora_dropout"] == 0.0


def test_recipe_script_flags_give_the_documented_table(capsys):
    flags = recipe_command_line("finetune_guanaco_7b.sh")
    assert "--mmlu_data_dir" in flags and "--bf16" in flags  # its whole command line, not a chosen few
    status, full, err = run_cli(capsys, "--config", "llama-7b", *flags)
    assert status == 0, err
    status, short, _ = run_cli(capsys, *RECIPE_7B)
    assert full == short
    assert full.strip() == documented_output(os.path.join(REPO_ROOT, "docs", "MEMORY.md"),
                                             "Output for the Guanaco-7B recipe")


def test_demo_config_file_is_read_and_its_model_shape_used(tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "demo" / "tiny-llama"  # the file's model_name_or_path, relative to the working directory
    LlamaConfig(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                vocab_size=500).save_pretrained(model_dir)
    monkeypatch.chdir(tmp_path)
    report = estimate_json(capsys, DEMO_CONFIG)
    shape = load_shape(str(model_dir))
    assert report["model"] == "demo/tiny-llama"
    assert (report["seq_len"], report["per_device_train_batch_size"], report["bf16"]) == (32 + 32, 4, True)
    head_adapter = 16 * (96 + 500)  # the demo adapts the output head too
    assert report["components_mb"]["lora_weights"] == pytest.approx(
        (em.lora_params(shape, 16, em.parse_lora_modules("all", shape)) + head_adapter) * 2 / MB, abs=0.05)
    assert report["components_mb"]["embeddings_and_lm_head"] == pytest.approx(2 * 500 * 96 * 2 / MB, abs=0.05)
    # flags after the file override it
    halved = estimate_json(capsys, DEMO_CONFIG, "--per_device_train_batch_size", "2")
    assert halved["components_mb"]["logits"] == pytest.approx(report["components_mb"]["logits"] / 2, abs=0.05)
    assert halved["components_mb"]["lora_weights"] == report["components_mb"]["lora_weights"]


def test_misspelt_config_file_key_is_one_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model_name_or_path: /nowhere\nlora_rank: 8\n")
    status, _, err = run_cli(capsys, str(config))
    assert status == 2 and err.count("\n") == 1 and "lora_rank" in err and "lora_r" in err


@pytest.mark.parametrize("flags, component, grows", [
    (["--per_device_train_batch_size", "4"], "layer_activations", True),
    (["--per_device_train_batch_size", "4"], "logits", True),
    (["--target_max_len", "2032"], "checkpointed_activations", True),
    (["--max_seq_len", "4096"], "logits", True),
    (["--lora_r", "16"], "lora_weights", False),
    (["--lora_modules", "q_proj,v_proj"], "optimizer_states", False),
    (["--bits", "8"], "quantized_base_weights", True),
    (["--double_quant", "False"], "quantized_base_weights", True),
    (["--adam8bit"], "optimizer_states", False),
    (["--optim", "adamw_torch"], "optimizer_states", False),
    (["--lora_dropout", "0"], "layer_activations", False),
    (["--attn_implementation", "eager"], "layer_activations", True),
    (["--norms_in_fp32"], "checkpointed_activations", True),
    (["--gradient_checkpointing", "False"], "layer_activations", True),
    (["--bf16", "False"], "embeddings_and_lm_head", True),
    (["--overhead_mb", "1024"], "cuda_context_overhead", True),
])
def test_a_flag_moves_its_component_the_expected_way(capsys, flags, component, grows):
    base = estimate_json(capsys, *RECIPE_7B)
    changed = estimate_json(capsys, *RECIPE_7B, *flags)
    assert (changed["components_mb"][component] > base["components_mb"][component]) == grows
    assert changed["components_mb"][component] != base["components_mb"][component]
    assert (changed["total_mb"] > base["total_mb"]) == grows


def test_precise_effects_of_flags(capsys):
    base = estimate_json(capsys, *RECIPE_7B)
    longer = estimate_json(capsys, *RECIPE_7B, "--target_max_len", "2032", "--per_device_train_batch_size", "4")
    assert longer["seq_len"] == 2048
    assert longer["components_mb"]["logits"] == pytest.approx(base["components_mb"]["logits"] * 4 * 2048 / 528, rel=1e-3)
    fp32_norms = estimate_json(capsys, *RECIPE_7B, "--norms_in_fp32")
    assert fp32_norms["norms_in_fp32"] is True and estimate_json(capsys, *RECIPE_7B, "--norms_in_fp32", "False") == base
    assert fp32_norms["components_mb"]["checkpointed_activations"] == pytest.approx(
        2 * base["components_mb"]["checkpointed_activations"], abs=0.1)
    assert fp32_norms["components_mb"]["optimizer_states"] == base["components_mb"]["optimizer_states"]
    no_gc = estimate_json(capsys, *RECIPE_7B, "--gradient_checkpointing", "False")
    assert no_gc["components_mb"]["checkpointed_activations"] == 0
    assert estimate_json(capsys, *RECIPE_7B, "--activation_checkpointing", "False") == no_gc  # its transformers 5 name
    # the transformers 5 setting wins over a contradicting reference flag, as in qlora.py
    assert estimate_json(capsys, *RECIPE_7B, "--gradient_checkpointing", "--activation_checkpointing", "False") == no_gc
    assert no_gc["components_mb"]["layer_activations"] > 10 * base["components_mb"]["layer_activations"]
    # --adam8bit is qlora.py's shorthand for --optim paged_adamw_8bit
    assert estimate_json(capsys, *RECIPE_7B, "--adam8bit") == estimate_json(capsys, *RECIPE_7B, "--optim",
                                                                            "paged_adamw_8bit")


def test_defaults_are_qlora_py_defaults(capsys):
    report = estimate_json(capsys, "--config", "llama-7b")
    assert (report["seq_len"], report["bf16"], report["norms_in_fp32"]) == (1024 + 256, False, False)
    components = em.estimate(preset_shape("llama-7b"), source_max_len=1024, target_max_len=256, bf16=False,
                             lora_dropout=0.0)
    assert report["components_mb"] == em.summarize(components, 24, "paged_adamw_32bit")["components_mb"]


def test_json_components_sum_to_total_and_fit(capsys):
    report = estimate_json(capsys, *RECIPE_7B[2:], "--config", "llama-65b", "--gpu_memory_gb", "48")
    assert report["model"] == "llama-65b" and report["seq_len"] == 528 and report["norms_in_fp32"] is False
    assert report["total_mb"] == pytest.approx(sum(report["components_mb"].values()), abs=0.05)
    assert report["fits"] is True
    assert report["components_mb"]["quantized_base_weights"] == pytest.approx(
        em.quantized_base_bytes(preset_shape("llama-65b")) / MB, abs=0.05)
    assert estimate_json(capsys, *RECIPE_7B[2:], "--config", "llama-65b")["fits"] is False


def test_table(capsys):
    status, out, _ = run_cli(capsys, *RECIPE_7B, "--gpu_memory_gb", "6")
    assert status == 0
    assert "quantized_base_weights" in out and "cuda_context_overhead" in out
    assert "does NOT fit in 6 GiB" in out
    assert "paged optimizer" in out  # 6.7 GB total, 5.5 GB without the optimizer states


def test_model_name_or_path_reads_a_local_config(tmp_path, capsys):
    """A LLaMA-shaped config read through its skeleton gives the numbers of LLaMA's q/k/v/o and
    gate/up/down layers computed by hand (what the estimate counted before it read skeletons)."""
    LlamaConfig(
        hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, vocab_size=1000,
    ).save_pretrained(tmp_path)
    shape = load_shape(str(tmp_path))
    assert (shape.hidden_size, shape.intermediate_size, shape.num_layers, shape.num_heads, shape.vocab_size,
            shape.tie_word_embeddings) == (256, 704, 4, 8, 1000, False)
    # grouped-query attention: k and v project to 2 heads * 32 = 64
    per_layer = 4 * (256 + 256) + 2 * 4 * (256 + 64) + 4 * (256 + 256) + 3 * 4 * (256 + 704)
    assert em.lora_params(shape, 4, em.parse_lora_modules("all", shape)) == 4 * per_layer
    weights = 4 * (2 * 256 * 256 + 2 * 256 * 64 + 3 * 256 * 704)
    assert em.base_linear_params(shape) == weights
    assert em.quantized_base_bytes(shape, 8) == weights + 4 * 4 * (256 + 64 + 64 + 256 + 704 + 704 + 256)
    assert em.dequant_buffer_bytes(shape) == 256 * 704 * 2
    report = estimate_json(capsys, "--model_name_or_path", str(tmp_path), "--lora_r", "4", "--bf16")
    assert report["components_mb"]["lora_weights"] == pytest.approx(4 * per_layer * 2 / MB, abs=0.05)
    assert report["fits"] is True
    # a preset names the shape itself: the path is not read
    assert estimate_json(capsys, "--model_name_or_path", str(tmp_path / "absent"), "--config", "llama-7b")["model"] == (
        "llama-7b")


def test_other_architectures_are_estimated_with_their_own_layers(tmp_path, capsys):
    """GPT-2: Conv1D layers c_attn (hidden -> 3 hidden), c_proj and c_fc/c_proj (4 x hidden MLP)."""
    AutoConfig.for_model("gpt2", n_embd=256, n_layer=4, n_head=4, vocab_size=1000).save_pretrained(tmp_path)
    report = estimate_json(capsys, "--model_name_or_path", str(tmp_path), "--lora_r", "64", "--bf16")
    per_layer = 64 * ((256 + 768) + (256 + 256) + (256 + 1024) + (1024 + 256))
    assert 4 * per_layer * 2 == 2 * MB
    assert report["components_mb"]["lora_weights"] == 2.0
    weights = 4 * (256 * 768 + 256 * 256 + 2 * 256 * 1024)
    assert report["components_mb"]["quantized_base_weights"] == pytest.approx(weights * 4.126953125 / 8 / MB, abs=0.05)
    status, out, err = run_cli(capsys, "--model_name_or_path", str(tmp_path), "--lora_modules", "q_proj,v_proj")
    assert status == 2 and out == "" and err == (
        "error: --lora_modules: 'all' or a comma list of this model's linear layers, c_attn, c_fc, c_proj, lm_head; "
        "got 'q_proj,v_proj'\n")


def test_unknown_flag_is_one_line_exit_2():
    result = run_python([SCRIPT, "--config", "llama-7b", "--lora_rank", "8"], check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: unrecognized arguments: --lora_rank 8 (did you mean '--lora_r'?)"]


@pytest.mark.parametrize("argv, words", [
    ([], "--model_name_or_path"),  # qlora.py's default model is a hub id: nothing is downloaded unasked
    (["--config", "llama-7b", "--lora_r", "many"], "invalid int value"),
    (["--config", "llama-8b"], "invalid choice"),
    (["--config", "llama-7b", "--lora_modules", "nope"], "--lora_modules"),
    (["--config", "llama-7b", "--optim", "sgd"], "--optim"),
    (["--config", "llama-7b", "--bits", "3"], "--bits"),
    (["--config", "llama-7b", "--fp16"], "--fp16"),
    (["--config", "llama-7b", "--full_finetune", "--bits", "16"], "--full_finetune"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, words):
    status, out, err = run_cli(capsys, *argv)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err


def test_model_directory_without_config_is_one_line(tmp_path, capsys):
    status, _, err = run_cli(capsys, "--model_name_or_path", str(tmp_path))
    assert status == 2 and err.count("\n") == 1 and str(tmp_path) in err


def test_the_table_says_mib_gib_and_its_assumptions(capsys):
    status, out, _ = run_cli(capsys, *RECIPE_7B)
    assert status == 0
    lines = out.splitlines()
    assert lines[1] == ("assumes: per-device batch 1 (x 16 accumulation; accumulation does not add memory), rows of "
                        "up to 528 tokens, activation checkpointing on, optimizer paged_adamw_32bit, bf16 compute, "
                        "4-bit base, LoRA r 64 (--lora_modules all), one GPU")
    assert lines[2].split() == ["component", "MiB"] and lines[-1] == "fits in 24 GiB (24,576 MiB)"


def test_a_run_that_does_not_fit_lists_the_nearest_settings_that_do(capsys):
    too_big = [*RECIPE_7B, "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1",
               "--gpu_memory_gb", "12"]
    report = estimate_json(capsys, *too_big)
    assert not report["fits"]
    changes = {item["change"]: item["total_mb"] for item in report["nearest_fitting"]}
    # each listed change, estimated on its own, fits the card, and the next smaller step was needed
    for change, total_mb in changes.items():
        if change.startswith("--"):
            assert estimate_json(capsys, *too_big, *change.split())["total_mb"] == total_mb <= 12 * 1024
    batch_change = next(change for change in changes if change.startswith("--per_device_train_batch_size"))
    batch, accumulation = int(batch_change.split()[1]), int(batch_change.split()[3])
    assert batch * accumulation == 16 and batch < 16
    assert not estimate_json(capsys, *too_big, "--per_device_train_batch_size", str(batch * 2))["fits"]
    assert any(change.startswith("FSDP over") for change in changes)
    status, out, _ = run_cli(capsys, *too_big)
    assert "each of these alone fits (estimated peak per GPU):" in out and f"  {batch_change}: " in out


def test_shard_over_divides_only_weights_gradients_and_optimizer_states():
    components = dict.fromkeys(em.estimate(preset_shape("llama-7b")), 8.0)
    sharded = em.shard_over(components, 4)
    assert {name for name, value in sharded.items() if value == 2.0} == set(em.SHARDED_COMPONENTS)
    assert sharded["logits"] == sharded["checkpointed_activations"] == 8.0
