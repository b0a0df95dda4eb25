import importlib.util
import json

import pytest

from qlorakit.config import ArgumentError, parse_arguments

BASE = ["--model_name_or_path", "some-org/some-model", "--output_dir", "/tmp/qlorakit-test-out"]


def parse(*flags):
    return parse_arguments([*BASE, *flags])


class TestReferenceDefaults:
    def test_training_defaults_match_the_reference(self):
        _, data_args, training_args, generation_args = parse()
        assert training_args.optim == "paged_adamw_32bit"
        assert training_args.per_device_train_batch_size == 1
        assert training_args.gradient_accumulation_steps == 16
        assert training_args.learning_rate == 2e-4
        assert training_args.max_grad_norm == 0.3
        assert training_args.lr_scheduler_type == "constant"
        assert training_args.warmup_ratio == 0.03
        assert training_args.save_steps == 250
        assert training_args.save_total_limit == 40
        assert training_args.remove_unused_columns is False
        assert training_args.max_steps == 10000
        assert (training_args.bits, training_args.quant_type, training_args.double_quant) == (4, "nf4", True)
        assert (training_args.lora_r, training_args.lora_alpha, training_args.lora_dropout) == (64, 16, 0.0)
        assert (data_args.source_max_len, data_args.target_max_len, data_args.eval_dataset_size) == (1024, 256, 1024)
        assert data_args.dataset == "alpaca"
        assert (generation_args.max_new_tokens, generation_args.top_k, generation_args.num_beams) == (256, 50, 1)

    def test_group_by_length_is_on_by_default_and_maps_to_the_new_sampler(self):
        assert parse()[2].train_sampling_strategy == "group_by_length"
        assert parse("--group_by_length", "False")[2].train_sampling_strategy == "random"

    def test_gradient_checkpointing_maps_to_activation_checkpointing(self):
        assert parse()[2].activation_checkpointing is True
        assert parse("--gradient_checkpointing", "False")[2].activation_checkpointing is False

    def test_trust_remote_code_is_off_by_default(self):
        assert parse()[0].trust_remote_code is False


class TestOldFlags:
    def test_evaluation_strategy_is_accepted_as_eval_strategy(self):
        training_args = parse("--evaluation_strategy", "steps", "--eval_steps", "5", "--do_eval")[2]
        assert training_args.eval_strategy == "steps"

    def test_use_cache_feeds_generation_and_never_training(self):
        training_args = parse("--use_cache", "True")[2]
        assert training_args.generation_use_cache is True
        assert training_args.use_cache is False
        assert parse("--use_cache", "False")[2].generation_use_cache is False

    def test_adam8bit_picks_the_8bit_paged_optimizer(self):
        assert parse("--adam8bit")[2].optim == "paged_adamw_8bit"
        assert parse()[2].optim == "paged_adamw_32bit"

    def test_warmup_ratio_sets_the_warmup_fraction(self):
        assert parse()[2].get_warmup_steps(1000) == 30
        assert parse("--warmup_ratio", "0.1")[2].get_warmup_steps(200) == 20
        assert parse("--warmup_steps", "7")[2].get_warmup_steps(1000) == 7

    def test_do_predict_generates(self):
        assert parse("--do_predict")[2].predict_with_generate is True


class TestValidation:
    def test_unknown_flag_is_an_error(self):
        with pytest.raises(ArgumentError, match="lora_rank"):
            parse("--lora_rank", "8")

    @pytest.mark.parametrize("flags, message", [
        (("--bits", "3"), "--bits must be one of"),
        (("--quant_type", "int4"), "--quant_type must be one of"),
        (("--full_finetune", "--bits", "4"), "--full_finetune"),
        (("--mmlu_dataset", "mmlu-xx"), "--mmlu_dataset"),
        (("--warmup_ratio", "1.5"), "--warmup_ratio"),
    ])
    def test_bad_values_are_rejected(self, flags, message):
        with pytest.raises(ArgumentError, match=message):
            parse(*flags)

    @pytest.mark.parametrize("flags, missing, message", [
        (("--use_liger_kernel", "True"), {"liger_kernel"}, "--use_liger_kernel needs liger_kernel: pip install liger-kernel"),
        (("--attn_implementation", "flash_attention_2"), {"flash_attn", "kernels"}, "needs flash_attn or kernels"),
    ])
    def test_a_flag_whose_package_is_missing_fails_up_front(self, monkeypatch, flags, missing, message):
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name in missing else find_spec(name))
        with pytest.raises(ArgumentError, match=message):
            parse(*flags)

    def test_flash_attention_through_hub_kernels_is_accepted(self, monkeypatch):
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name: None if name == "flash_attn" else object() if name == "kernels" else find_spec(name))
        assert parse("--attn_implementation", "flash_attention_2")[0].attn_implementation == "flash_attention_2"

    def test_missing_local_model_directory(self):
        with pytest.raises(ArgumentError, match="no such directory"):
            parse_arguments(["--model_name_or_path", "./does/not/exist"])


def test_a_json_config_file_is_parsed(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model_name_or_path": "org/m", "output_dir": str(tmp_path), "lora_r": 8}))
    model_args, _, training_args, _ = parse_arguments([str(config)])
    assert (model_args.model_name_or_path, training_args.lora_r) == ("org/m", 8)


class TestConfigFiles:
    @pytest.mark.parametrize("name, text", [
        ("run.yaml", "model_name_or_path: org/m\nlora_rnk: 8\n"),
        ("run.json", '{"model_name_or_path": "org/m", "lora_rnk": 8}'),
    ])
    def test_a_misspelt_key_names_the_closest_known_one(self, tmp_path, name, text):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ArgumentError, match="unknown key 'lora_rnk' \\(did you mean 'lora_r'\\?\\)"):
            parse_arguments([str(path)])

    def test_qlora_py_reports_it_in_one_line_with_exit_2(self, tmp_path):
        from conftest import run_python

        path = tmp_path / "run.yaml"
        path.write_text("model_name_or_path: org/m\nlora_rnk: 8\n")
        result = run_python(["qlora.py", str(path)], check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [f"error: {path}: unknown key 'lora_rnk' (did you mean 'lora_r'?)"]

    @pytest.mark.parametrize("text, message", [("- a\n- b\n", "one mapping"), ("a: [1,\n", "cannot read")])
    def test_a_config_that_is_not_a_mapping_is_refused(self, tmp_path, text, message):
        path = tmp_path / "run.yaml"
        path.write_text(text)
        with pytest.raises(ArgumentError, match=message):
            parse_arguments([str(path)])

    def test_the_demo_config_parses(self):
        from conftest import REPO_ROOT

        _, data_args, training_args, _ = parse_arguments([f"{REPO_ROOT}/examples/configs/tiny_demo.yaml"])
        assert (training_args.lora_r, training_args.max_steps, data_args.dataset_format) == (16, 30, "oasst1")
