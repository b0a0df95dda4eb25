"""Generation controls (qlorakit.generation): every inference command and qlora.py --do_predict take
the same controls, they reach generate as one GenerationConfig, stop strings default to the prompt
template's turn markers, and every output is cut before the first stop string."""

import json
import os

import pytest
import torch

from conftest import REPO_ROOT, run_python
from qlorakit import SAMPLE_DATA_DIR
from qlorakit.chat_data import FIREFLY_TEMPLATE, GUANACO_TEMPLATE
from qlorakit.cli import chat, generate, guanaco_generate
from qlorakit.generation import (cut_at_stop_strings, inference_generation_config, reply_text, resolve_stop_strings,
                                 stop_strings_of)

GUANACO_MARKERS = ["### Human:", "### Assistant:"]
PROMPT = "### Human: What is rain?### Assistant:"
CONTROLS = {"max_new_tokens": "7", "temperature": "0.35", "top_p": "0.75", "top_k": "40", "repetition_penalty": "1.2",
            "no_repeat_ngram_size": "3", "max_time": "30"}
EXPECTED = {"max_new_tokens": 7, "do_sample": True, "temperature": 0.35, "top_p": 0.75, "top_k": 40,
            "repetition_penalty": 1.2, "no_repeat_ngram_size": 3, "max_time": 30.0, "stop_strings": ["END", "STOP"]}

# Each inference command's own parser, given its required flags.
PARSERS = {
    "qlora-generate": lambda flags: generate.parse_args(["--model", "m", "-q", "q.jsonl", "-o", "o.jsonl", *flags]),
    "qlora-guanaco-generate": lambda flags: guanaco_generate.parse_args(["--model_name_or_path", "m", *flags]),
    "qlora-chat": lambda flags: chat.parse_args(["--model_name_or_path", "m", *flags]),
}


def control_flags(separator):
    flags = [item for name, value in CONTROLS.items() for item in (f"--{name.replace('_', separator)}", value)]
    return [*flags, f"--stop{separator}strings", "END", "STOP"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from qlorakit.tokenizer import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from qlorakit.inference_model import load_for_inference

    return load_for_inference(tiny_model_dir, bits=32, compute_dtype="float32")


@pytest.mark.parametrize("separator", ["_", "-"])
@pytest.mark.parametrize("command", PARSERS)
def test_each_command_takes_every_control_in_either_spelling_into_one_generation_config(command, separator,
                                                                                        tokenizer, capsys):
    args = PARSERS[command](control_flags(separator))
    config = inference_generation_config(args, tokenizer, GUANACO_TEMPLATE)
    assert {name: getattr(config, name) for name in EXPECTED} == EXPECTED
    assert config.pad_token_id == tokenizer.pad_token_id
    assert capsys.readouterr().err.strip() == "stop strings: 'END', 'STOP' (--stop_strings)"


def test_qlora_do_predict_takes_the_controls_under_the_reference_names(tiny_model_dir, tmp_path, tokenizer):
    from qlorakit.config import parse_arguments
    from qlorakit.train import predict_generation_config

    flags = [item for name, value in CONTROLS.items() for item in (f"--{name}", value)]
    args = parse_arguments(["--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path), "--do_sample",
                            "True", *flags, "--stop_strings", "END", "STOP"])
    config = predict_generation_config(args.generation, tokenizer, GUANACO_TEMPLATE)
    assert {name: getattr(config, name) for name in EXPECTED} == EXPECTED


class TestDefaultStopStrings:
    def test_the_templates_turn_markers(self, tokenizer):
        assert resolve_stop_strings(None, tokenizer, GUANACO_TEMPLATE) == GUANACO_MARKERS
        assert resolve_stop_strings(None, tokenizer, FIREFLY_TEMPLATE) == []  # eos alone ends a reply there

    def test_given_ones_replace_them_and_an_empty_one_means_none(self, tokenizer):
        assert resolve_stop_strings(["END"], tokenizer, GUANACO_TEMPLATE) == ["END"]
        assert resolve_stop_strings([""], tokenizer, GUANACO_TEMPLATE) == []
        assert resolve_stop_strings("END", tokenizer, None) == ["END"]  # a config file's single string

    @pytest.mark.parametrize("command", PARSERS)
    def test_each_command_stops_at_its_templates_markers_unless_told_otherwise(self, command, tokenizer):
        config = inference_generation_config(PARSERS[command]([]), tokenizer, GUANACO_TEMPLATE)
        assert config.stop_strings == GUANACO_MARKERS
        assert inference_generation_config(PARSERS[command](["--stop_strings", ""]), tokenizer,
                                           GUANACO_TEMPLATE).stop_strings is None

    def test_qlora_predicts_conversations_up_to_the_markers_and_other_data_whole(self, tokenizer):
        from qlorakit.config import GenerationArguments
        from qlorakit.train import predict_generation_config

        assert predict_generation_config(GenerationArguments(), tokenizer, GUANACO_TEMPLATE).stop_strings == \
            GUANACO_MARKERS
        assert predict_generation_config(GenerationArguments(), tokenizer, None).stop_strings is None


@pytest.mark.parametrize("command, flags, message", [
    ("qlora-generate", ["--repetition_penalty", "0"], "--repetition_penalty must be above 0, got 0.0"),
    ("qlora-chat", ["--max-time", "-1"], "--max_time must be above 0 (seconds), got -1.0"),
    ("qlora-guanaco-generate", ["--no_repeat_ngram_size", "-2"], "--no_repeat_ngram_size must be at least 0, got -2"),
])
def test_bad_values_are_refused_before_the_model_loads(command, flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        PARSERS[command](flags)
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip().endswith(message)


def test_qlora_refuses_them_too(tiny_model_dir, tmp_path):
    from qlorakit.config import parse_arguments
    from qlorakit.errors import ArgumentError

    with pytest.raises(ArgumentError, match="--max_time must be above 0"):
        parse_arguments(["--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path), "--max_time", "-1"])


class GenerateSpy:
    """Wraps a model's generate: records the config it was given and the new tokens of its first row."""

    def __init__(self, model, monkeypatch):
        self.configs, self.new_tokens = [], []
        real = model.generate

        def spy(*args, **kwargs):
            output = real(*args, **kwargs)
            self.configs.append(kwargs.get("generation_config"))
            self.new_tokens.append(output[0, kwargs["input_ids"].shape[1]:].tolist())
            return output

        monkeypatch.setattr(model, "generate", spy)


def reply_of(command, model, tokenizer, args):
    """The reply a command gives PROMPT with its own generation path and parsed flags."""
    config = inference_generation_config(args, tokenizer, GUANACO_TEMPLATE)
    torch.manual_seed(args.seed)
    if command == "qlora-generate":  # the raw generation, cut as its generation_truncated
        return reply_text(generate.generate_batch(model, tokenizer, [PROMPT], config)[0], config), config
    if command == "qlora-guanaco-generate":
        return guanaco_generate.generate_answer(model, tokenizer, PROMPT, config, args.seed), config
    return chat.stream_reply(chat.generate_pieces(model, tokenizer, PROMPT, config), lambda text: None,
                             stop_strings_of(config)), config


def first_new_word(tokenizer, token_ids):
    """A stop string a run of these tokens meets after a few of them: the text of a later token that
    is a word not written before it, and the token's index."""
    for index in range(2, len(token_ids)):
        word = tokenizer.decode(token_ids[index:index + 1]).strip()
        if word.isalpha() and word not in tokenizer.decode(token_ids[:index]):
            return word, index
    raise AssertionError(f"no new word in {tokenizer.decode(token_ids)!r}")


@pytest.mark.parametrize("command", PARSERS)
def test_a_stop_string_ends_generation_early_and_the_reply_before_it(command, model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    spy = GenerateSpy(model, monkeypatch)
    sampling = ["--max_new_tokens", "24", "--temperature", "1", "--top_p", "1", "--top_k", "0", "--stop_strings", ""]
    free, _ = reply_of(command, model, tokenizer, PARSERS[command](sampling))
    stop, index = first_new_word(tokenizer, spy.new_tokens[0])
    stopped, config = reply_of(command, model, tokenizer, PARSERS[command]([*sampling, "--stop_strings", stop]))
    assert config.stop_strings == [stop] and spy.configs[-1] is config
    assert len(spy.new_tokens[0]) == 24 and spy.new_tokens[1] == spy.new_tokens[0][:index + 1]
    assert stopped == cut_at_stop_strings(free, [stop]).strip() and stop not in stopped and stopped


def test_repetition_controls_change_greedy_output(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    spy = GenerateSpy(model, monkeypatch)

    def greedy(*flags):
        args = PARSERS["qlora-guanaco-generate"](["--temperature", "0", "--max_new_tokens", "16", *flags])
        config = inference_generation_config(args, tokenizer, GUANACO_TEMPLATE)
        return guanaco_generate.generate_answer(model, tokenizer, PROMPT, config)

    plain = greedy()
    assert greedy("--repetition_penalty", "1.2") != plain
    greedy("--no_repeat_ngram_size", "1")
    plain_tokens, _, unrepeated = spy.new_tokens
    assert len(set(plain_tokens)) < len(plain_tokens)  # the random model repeats itself
    assert len(set(unrepeated)) == len(unrepeated) == 16


def test_a_time_limit_already_spent_stops_after_the_first_token(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    spy = GenerateSpy(model, monkeypatch)
    args = PARSERS["qlora-guanaco-generate"](["--temperature", "0", "--max_new_tokens", "16", "--max_time", "1e-9"])
    guanaco_generate.generate_answer(model, tokenizer, PROMPT, inference_generation_config(args, tokenizer, None))
    assert len(spy.new_tokens[0]) == 1


def test_prediction_fields_cut_the_answer_not_the_prompt():
    from qlorakit.train import prediction_fields

    fields = prediction_fields("### Human: Hi### Assistant:", "### Human: Hi### Assistant: Hello.### Human: more",
                               GUANACO_MARKERS)
    assert fields == {"prediction_with_input": "### Human: Hi### Assistant: Hello.", "prediction": "Hello."}
    assert prediction_fields("", " a### Human: b", [])["prediction"] == "a### Human: b"  # no stop strings: whole


def test_qlora_do_predict_stops_at_a_stop_string_and_cuts_before_it(tiny_model_dir, tmp_path, monkeypatch):
    from qlorakit.config import parse_arguments
    from qlorakit.train import predict, setup_trainer

    def predict_with(*flags):
        output_dir = str(tmp_path / str(len(flags)))
        args = parse_arguments(["--model_name_or_path", tiny_model_dir, "--output_dir", output_dir, "--use_cpu",
                                "--dataset", os.path.join(SAMPLE_DATA_DIR, "chat_sample.jsonl"), "--do_train", "False",
                                "--do_predict", "True", "--eval_dataset_size", "1", "--per_device_eval_batch_size", "1",
                                "--max_new_tokens", "24", "--do_sample", "True", "--top_k", "0", "--bf16", "False",
                                *flags])
        trainer, tokenizer, eval_dataset = setup_trainer(args)
        spy = GenerateSpy(trainer.model, monkeypatch)
        predict(trainer, tokenizer, eval_dataset, output_dir)
        row = json.loads(open(os.path.join(output_dir, "predictions.jsonl")).read())
        return trainer.model.generation_config, spy.new_tokens[0], row, tokenizer

    config, tokens, free, tokenizer = predict_with()
    assert config.stop_strings == GUANACO_MARKERS  # conversations: the template's turn markers
    stop, index = first_new_word(tokenizer, tokens)
    config, stopped_tokens, stopped, _ = predict_with("--stop_strings", stop, "--max_time", "600")
    assert (config.stop_strings, config.max_time) == ([stop], 600.0)
    assert len(tokens) == 24 and stopped_tokens == tokens[:index + 1]
    assert stopped["prediction"] == cut_at_stop_strings(free["prediction"], [stop]).strip() and stopped["prediction"]
    assert stopped["prediction_with_input"].endswith(stopped["prediction"])


def test_qlora_generate_with_the_tutorials_settings(tiny_model_dir, tokenizer, tmp_path):
    """The command line as a user types it: the tutorial's sampling settings, and stop strings that
    any reply soon meets (vowels), which end it within its first few tokens of the 64 allowed."""
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "text": "Name a colour.", "category": "generic"}) + "\n")
    out = tmp_path / "answers.jsonl"
    vowels = ["a", "e", "i", "o", "u"]
    result = run_python([os.path.join(REPO_ROOT, "eval", "generate.py"), "--model", tiny_model_dir, "-q",
                         str(questions), "-o", str(out), "--max-new-tokens", "64", "--top_p", "0.75",
                         "--temperature", "0.35", "--repetition_penalty", "1.2", "--no-repeat-ngram-size", "3",
                         "--max-time", "300", "--stop-strings", *vowels])
    assert "stop strings: 'a', 'e', 'i', 'o', 'u' (--stop_strings)" in result.stderr
    row = json.loads(out.read_text())
    raw, reply = row["generation"], row["generation_truncated"]
    first = min(raw.find(vowel) for vowel in vowels if vowel in raw)
    assert reply == raw[:first].strip() and not set(vowels) & set(reply)
    assert len(tokenizer(raw, add_special_tokens=False)["input_ids"]) <= 8
