import dataclasses
import importlib.util
import json
import logging

import pytest

from qlorakit.config import ArgumentError, flag_names, parse_arguments

BASE = ["--model_name_or_path", "some-org/some-model", "--output_dir", "/tmp/qlorakit-test-out"]


def parse(*flags):
    return parse_arguments([*BASE, *flags])


class TestReferenceDefaults:
    def test_training_defaults_match_the_reference(self):
        args = parse()
        training = args.training
        assert training.optim == "paged_adamw_32bit"
        assert training.per_device_train_batch_size == 1
        assert training.gradient_accumulation_steps == 16
        assert training.learning_rate == 2e-4
        assert training.max_grad_norm == 0.3
        assert training.lr_scheduler_type == "constant"
        assert training.get_warmup_steps(1000) == 30  # --warmup_ratio 0.03
        assert training.save_steps == 250
        assert training.save_total_limit == 40
        assert training.remove_unused_columns is False
        assert training.max_steps == 10000
        assert (args.quantization.bits, args.quantization.quant_type, args.quantization.double_quant) == (4, "nf4", True)
        assert (args.lora.lora_r, args.lora.lora_alpha, args.lora.lora_dropout) == (64, 16, 0.0)
        assert (args.data.source_max_len, args.data.target_max_len, args.data.eval_dataset_size) == (1024, 256, 1024)
        assert args.data.dataset == "alpaca"
        assert (args.mmlu.mmlu_dataset, args.mmlu.mmlu_split, args.mmlu.mmlu_source_max_len) == ("mmlu-fs", "eval", 2048)
        assert (args.generation.max_new_tokens, args.generation.top_k, args.generation.num_beams) == (256, 50, 1)

    def test_group_by_length_is_on_by_default_and_maps_to_the_new_sampler(self):
        assert parse().training.train_sampling_strategy == "group_by_length"
        assert parse("--group_by_length", "False").training.train_sampling_strategy == "random"

    def test_gradient_checkpointing_maps_to_activation_checkpointing(self):
        assert parse().training.activation_checkpointing is True
        assert parse("--gradient_checkpointing", "False").training.activation_checkpointing is False
        assert parse("--no_gradient_checkpointing").training.activation_checkpointing is False

    def test_trust_remote_code_is_off_by_default(self):
        assert parse().model.trust_remote_code is False


class TestArgumentGroups:
    def test_each_flag_lands_in_the_group_of_its_concern(self):
        args = parse("--lora_r", "8", "--bits", "8", "--cache_dir", "/c", "--train_on_source", "--padding_free",
                     "--do_mmlu_eval", "--max_new_tokens", "9", "--max_memory_MB", "1000")
        assert (args.lora.lora_r, args.quantization.bits, args.model.cache_dir, args.model.max_memory_MB) == (8, 8, "/c", 1000)
        assert (args.data.train_on_source, args.data.padding_free, args.mmlu.do_mmlu_eval) == (True, True, True)
        assert args.generation.max_new_tokens == 9

    def test_help_lists_the_flags_by_group(self, capsys):
        with pytest.raises(SystemExit):
            parse_arguments(["--help"])
        text = capsys.readouterr().out
        headings = ["model:", "quantization of the frozen base:", "LoRA:", "data:", "MMLU evaluation:",
                    "training (transformers TrainingArguments):", "generation (--do_predict):",
                    "reference flags (read as their transformers 5 settings):"]
        positions = [text.index(f"\n{heading}\n") for heading in headings]
        assert positions == sorted(positions)
        section = dict(zip(headings, (text.split(f"\n{h}\n", 1)[1].split("\n\n", 1)[0] for h in headings)))
        assert "--lora_r" in section["LoRA:"] and "--bits" in section["quantization of the frozen base:"]
        assert "--use_cache" in section["generation (--do_predict):"]
        assert "--gradient_checkpointing" in section["reference flags (read as their transformers 5 settings):"]
        assert "--generation_use_cache" not in text

    def test_data_help_is_written_from_the_registries(self):
        from qlorakit.chat_data import NAMED_TEMPLATES
        from qlorakit.config import DataArguments
        from qlorakit.data import FORMATS, HUB_DATASETS, columns_rule

        help_of = {f.name: f.metadata["help"] for f in dataclasses.fields(DataArguments)}
        assert help_of["dataset_format"].startswith(" | ".join(FORMATS) + ".")
        for name, data_format in FORMATS.items():
            rule = f"{columns_rule(data_format)}: {name}" if data_format.detected else name
            assert rule in help_of["dataset_format"]
        assert f"({', '.join(HUB_DATASETS)})" in help_of["dataset"]
        assert all(template.description in help_of["chat_template"] for template in NAMED_TEMPLATES.values())

    def test_every_flag_name_is_unique_across_groups(self):
        names = flag_names()
        assert len(names) == len(set(names))


class TestReferenceFlags:
    def test_evaluation_strategy_is_read_as_eval_strategy_with_a_notice(self, caplog):
        with caplog.at_level(logging.WARNING, logger="qlorakit.config"):
            training = parse("--evaluation_strategy", "steps", "--eval_steps", "5", "--do_eval").training
        assert training.eval_strategy == "steps"
        assert [r.getMessage() for r in caplog.records] == ["--evaluation_strategy steps is read as --eval_strategy steps"]

    def test_defaults_of_reference_flags_apply_without_a_notice(self, caplog):
        with caplog.at_level(logging.WARNING, logger="qlorakit.config"):
            parse()
        assert caplog.records == []

    def test_use_cache_is_a_generation_setting_and_training_runs_without_the_cache(self):
        args = parse("--use_cache", "False")
        assert (args.generation.use_cache, args.training.use_cache) == (False, False)
        assert parse().generation.use_cache is True

    def test_adam8bit_picks_the_8bit_paged_optimizer(self):
        assert parse("--adam8bit").training.optim == "paged_adamw_8bit"
        assert parse().training.optim == "paged_adamw_32bit"

    def test_warmup_ratio_sets_the_warmup_fraction(self):
        assert parse("--warmup_ratio", "0.1").training.get_warmup_steps(200) == 20
        assert parse("--warmup_steps", "7").training.get_warmup_steps(1000) == 7

    def test_do_predict_generates(self):
        assert parse("--do_predict").training.predict_with_generate is True

    @pytest.mark.parametrize("flags", [
        ("--activation_checkpointing", "False"),
        ("--train_sampling_strategy", "sequential"),
        ("--optim", "adamw_torch"),
        ("--warmup_steps", "0"),
        ("--eval_strategy", "no"),
    ])
    def test_a_setting_the_user_gave_is_never_replaced_by_a_reference_default(self, flags):
        training = parse(*flags).training
        setting, value = flags[0][2:], flags[1]
        expected = {"False": False, "0": 0}.get(value, value)
        assert getattr(training, setting) == expected

    @pytest.mark.parametrize("flags, setting, value, notice", [
        (("--gradient_checkpointing", "True", "--activation_checkpointing", "False"), "activation_checkpointing", False,
         "--gradient_checkpointing True is overridden by --activation_checkpointing False"),
        (("--activation_checkpointing", "False", "--gradient_checkpointing"), "activation_checkpointing", False,
         "--gradient_checkpointing True is overridden by --activation_checkpointing False"),
        (("--adam8bit", "--optim", "adamw_torch"), "optim", "adamw_torch",
         "--adam8bit True is overridden by --optim adamw_torch"),
        (("--warmup_ratio", "0.1", "--warmup_steps", "5"), "warmup_steps", 5, "--warmup_ratio 0.1 is overridden by --warmup_steps 5.0"),
        (("--evaluation_strategy", "steps", "--eval_strategy", "no"), "eval_strategy", "no",
         "--evaluation_strategy steps is overridden by --eval_strategy no"),
    ])
    def test_the_transformers_setting_wins_over_a_contradicting_reference_flag(self, caplog, flags, setting, value, notice):
        with caplog.at_level(logging.WARNING, logger="qlorakit.config"):
            training = parse(*flags).training
        assert getattr(training, setting) == value
        assert [r.getMessage() for r in caplog.records] == [notice]

    def test_predicting_without_generating_is_refused(self):
        with pytest.raises(ArgumentError, match="--do_predict writes generated answers"):
            parse("--do_predict", "--predict_with_generate", "False")

    def test_a_recipe_scripts_reference_flags_can_be_overridden_with_the_new_spelling(self):
        from conftest import REPO_ROOT

        text = open(f"{REPO_ROOT}/scripts/qlora_common.sh").read()
        assert "--gradient_checkpointing" in text  # the recipe passes the reference's spelling
        training = parse("--gradient_checkpointing", "--activation_checkpointing", "False").training
        assert training.activation_checkpointing is False

    def test_agreeing_spellings_are_accepted(self):
        assert parse("--gradient_checkpointing", "False", "--activation_checkpointing", "False").training.activation_checkpointing is False

    def test_a_config_file_translates_the_same_way(self, tmp_path):
        path = tmp_path / "run.yaml"
        path.write_text("model_name_or_path: org/m\ngroup_by_length: false\nadam8bit: true\nactivation_checkpointing: false\n")
        training = parse_arguments([str(path)]).training
        assert (training.train_sampling_strategy, training.optim) == ("random", "paged_adamw_8bit")
        assert training.activation_checkpointing is False


class TestEnvironment:
    def test_a_multi_process_run_gets_launcher_defaults(self, monkeypatch):
        from qlorakit.launcher import distributed_defaults

        monkeypatch.setenv("WORLD_SIZE", "2")
        defaults = distributed_defaults(cuda_available=False)
        assert defaults == {"ddp_backend": "gloo", "ddp_find_unused_parameters": False}
        assert distributed_defaults(cuda_available=True) == {"ddp_find_unused_parameters": False}

    def test_the_users_values_win_over_environment_defaults(self):
        defaults = {"ddp_find_unused_parameters": False, "logging_steps": 3}
        training = parse_arguments([*BASE, "--ddp_find_unused_parameters", "True"], environment_defaults=defaults).training
        assert (training.ddp_find_unused_parameters, training.logging_steps) == (True, 3)

    def test_a_single_process_gets_no_launcher_defaults(self, monkeypatch):
        from qlorakit.launcher import distributed_defaults

        monkeypatch.delenv("WORLD_SIZE", raising=False)
        assert distributed_defaults(cuda_available=False) == {}


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
        assert parse("--attn_implementation", "flash_attention_2").model.attn_implementation == "flash_attention_2"

    def test_missing_local_model_directory(self):
        with pytest.raises(ArgumentError, match="no such directory"):
            parse_arguments(["--model_name_or_path", "./does/not/exist"])


def test_a_json_config_file_is_parsed(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model_name_or_path": "org/m", "output_dir": str(tmp_path), "lora_r": 8}))
    args = parse_arguments([str(config)])
    assert (args.model.model_name_or_path, args.lora.lora_r) == ("org/m", 8)


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

    def test_qlora_py_reports_it_in_one_line_with_exit_2(self, tmp_path, run_in_process):
        from qlorakit.cli import train

        path = tmp_path / "run.yaml"
        path.write_text("model_name_or_path: org/m\nlora_rnk: 8\n")
        result = run_in_process(train, [str(path)])
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

        args = parse_arguments([f"{REPO_ROOT}/examples/configs/tiny_demo.yaml"])
        assert (args.lora.lora_r, args.training.max_steps, args.data.dataset_format) == (16, 40, "chat")


class TestConfigFilePlusFlags:
    def write_config(self, tmp_path):
        path = tmp_path / "run.yaml"
        path.write_text("model_name_or_path: org/m\noutput_dir: out\nmax_steps: 100\nlearning_rate: 0.001\n"
                        "gradient_checkpointing: false\n")
        return path

    def test_flags_after_the_file_override_it(self, tmp_path, capsys):
        path = self.write_config(tmp_path)
        args = parse_arguments([str(path), "--max_steps", "25", "--lora_r", "8"])
        assert (args.training.max_steps, args.lora.lora_r, args.training.learning_rate) == (25, 8, 0.001)
        assert f"settings: 4 from {path}, 2 from the command line (lora_r, max_steps)" in capsys.readouterr().err

    def test_reference_flags_are_translated_from_either_source(self, tmp_path):
        path = self.write_config(tmp_path)
        assert parse_arguments([str(path)]).training.activation_checkpointing is False
        # the transformers 5 spelling on the command line wins over the file's reference flag
        args = parse_arguments([str(path), "--activation_checkpointing", "True"])
        assert args.training.activation_checkpointing is True
        args = parse_arguments([str(path), "--gradient_checkpointing", "True"])
        assert args.training.activation_checkpointing is True

    def test_a_config_file_after_flags_is_named_as_misplaced(self, tmp_path):
        path = self.write_config(tmp_path)
        with pytest.raises(ArgumentError, match="a config file goes first"):
            parse_arguments(["--max_steps", "25", str(path)])


class TestMisspeltFlags:
    def test_a_misspelt_flag_names_the_closest_known_one(self):
        with pytest.raises(ArgumentError, match="unrecognized arguments: --max_stpes 5 \\(did you mean '--max_steps'\\?\\)"):
            parse("--max_stpes", "5")

    def test_qlora_py_reports_it_in_one_line_with_exit_2(self):
        from conftest import run_python

        result = run_python(["qlora.py", *BASE, "--lora_rnk", "8"], check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [
            "error: unrecognized arguments: --lora_rnk 8 (did you mean '--lora_r'?)"]
