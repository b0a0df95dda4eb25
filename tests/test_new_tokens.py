"""--new_tokens: tokens added to the vocabulary, whose embedding and head rows alone train beside LoRA.

One fp32 run on the tiny model trains two markers in replies of its own rows; the tests check
that the marker is learned, that only its rows change, that the trained rows come back exactly
through every path that loads the adapter (inference, merge, resume), and that an adapter whose
tokens do not match the tokenizer under it is refused in one line.
"""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from conftest import run_python
from qlorakit.base_loading import read_base_loading
from qlorakit.cli.merge_adapter import merge_adapter
from qlorakit.errors import ArgumentError, ModelError
from qlorakit.inference_model import load_base_for_inference, load_for_inference
from qlorakit.lora import load_adapter, read_adapter_config, trainable_token_layers, trained_token_ids
from qlorakit.tokenizer import add_new_tokens, load_tokenizer, read_new_tokens, resize_embeddings_for
from qlorakit.training_model import check_adapter_tokens

MARKERS = ["<|calc|>", "<|end_calc|>"]
STEPS = 24
QUESTION = "How many legs do 3 spiders have?"


def conversations():
    """Replies that call a calculator between the two markers (rows written for this test)."""
    rows = []
    for count, (animal, legs) in enumerate([("spiders", 8), ("ants", 6), ("birds", 2), ("dogs", 4)] * 2, start=2):
        question = f"How many legs do {count} {animal} have?"
        reply = f"{MARKERS[0]}{count}*{legs}{MARKERS[1]} They have {count * legs} legs."
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]})
    rows.append({"messages": [{"role": "user", "content": "3 × 7 は？"},
                              {"role": "assistant", "content": f"{MARKERS[0]}3*7{MARKERS[1]} 21 です。"}]})
    return rows


def flags(model_dir, data, output_dir, *extra):
    return ["qlora.py", "--model_name_or_path", model_dir, "--dataset", str(data), "--dataset_format", "chat",
            "--chat_template", "guanaco", "--output_dir", str(output_dir), "--use_cpu", "--bf16", "False",
            "--new_tokens", ",".join(MARKERS), "--lora_r", "8", "--lora_alpha", "16", "--learning_rate", "0.01",
            "--per_device_train_batch_size", "3", "--gradient_accumulation_steps", "1", "--max_steps", str(STEPS),
            "--save_steps", str(STEPS // 2), "--logging_steps", "1", "--source_max_len", "48",
            "--target_max_len", "48", "--seed", "0", *extra]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("marker-data") / "calls.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in conversations()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, data_file, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("marker-run")
    run_python(flags(tiny_model_dir, data_file, output_dir))
    return output_dir


def adapter_of(run_dir, step=STEPS):
    return os.path.join(run_dir, f"checkpoint-{step}", "adapter_model")


def marker_log_prob(model, tokenizer):
    """log p(first marker | a Guanaco prompt of the training question) under the model."""
    prompt = tokenizer(f"### Human: {QUESTION}### Assistant:", return_tensors="pt")
    with torch.no_grad():
        logits = model(**prompt).logits[0, -1]
    return torch.log_softmax(logits.float(), dim=-1)[tokenizer.convert_tokens_to_ids(MARKERS[0])].item()


class TestReadingTheFlag:
    def test_a_comma_list_and_a_file_name_the_same_tokens(self, tmp_path):
        listed = tmp_path / "tokens.txt"
        listed.write_text("<|a|>\n\n  <|b|>  \n", encoding="utf-8")
        assert read_new_tokens(str(listed)) == ["<|a|>", "<|b|>"]
        assert read_new_tokens(" <|a|>, <|b|>,") == ["<|a|>", "<|b|>"]

    @pytest.mark.parametrize("value, message", [(",", "names no token"), ("<|a|>,<|a|>", "more than once"),
                                                ("missing.txt", "no such file")])
    def test_bad_values_are_refused_in_one_line(self, value, message):
        with pytest.raises(ArgumentError, match=message):
            read_new_tokens(value)

    def test_tokens_go_after_the_vocabulary_and_known_ones_are_refused(self, tiny_model_dir):
        tokenizer = load_tokenizer(tiny_model_dir)
        size = len(tokenizer)
        assert add_new_tokens(tokenizer, MARKERS) == [size, size + 1]
        assert tokenizer.tokenize(f"x{MARKERS[0]}y")[1] == MARKERS[0]  # never split
        with pytest.raises(ArgumentError, match=r"already in the tokenizer's vocabulary: <\|calc\|> \(id"):
            add_new_tokens(tokenizer, [MARKERS[0], "<|fresh|>"])

    def test_a_bad_value_stops_the_command_before_loading(self, tiny_model_dir, tmp_path):
        result = run_python(["qlora.py", "--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path / "o"),
                             "--use_cpu", "--new_tokens", "<|x|>,<|x|>"], check=False)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == "error: --new_tokens names <|x|> more than once"


def tiny_causal_lm(tie):
    config = AutoConfig.for_model("llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tie)
    return AutoModelForCausalLM.from_config(config)


class TestWhichRowsTrain:
    def test_untied_head_rows_train_unless_asked_not_to(self):
        model = tiny_causal_lm(tie=False)
        assert trainable_token_layers(model, [62, 63]) == {"model.embed_tokens": [62, 63], "lm_head": [62, 63]}
        assert trainable_token_layers(model, [62, 63], in_head=False) == {"model.embed_tokens": [62, 63]}

    def test_a_head_that_lora_adapts_or_that_is_tied_is_not_wrapped_again(self):
        assert trainable_token_layers(tiny_causal_lm(tie=False), [63], lora_targets=["q_proj", "lm_head"]) == {
            "model.embed_tokens": [63]}
        assert trainable_token_layers(tiny_causal_lm(tie=True), [63]) == {"model.embed_tokens": [63]}


class TestTrainedRun:
    def test_the_adapter_trains_the_new_rows_and_carries_their_tokenizer(self, run_dir):
        adapter = adapter_of(run_dir)
        assert trained_token_ids(read_adapter_config(adapter)) == [2049, 2050]
        saved = AutoTokenizer.from_pretrained(adapter)
        assert saved.convert_ids_to_tokens([2049, 2050]) == MARKERS
        rows = {name: tensor.shape for name, tensor in load_file(os.path.join(adapter, "adapter_model.safetensors")).items()
                if "trainable_tokens" in name}
        assert sorted(rows) == ["base_model.model.lm_head.token_adapter.trainable_tokens_delta",
                                "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
        assert all(shape == (2, 256) for shape in rows.values())  # two rows each, not the whole matrices

    def test_the_marker_is_learned(self, tiny_model_dir, run_dir):
        adapter = adapter_of(run_dir)
        model, tokenizer = load_for_inference(tiny_model_dir, adapter)
        trained = marker_log_prob(model, tokenizer)
        base, _ = load_base_for_inference(tiny_model_dir, read_base_loading(adapter), adapter=adapter)
        untrained = marker_log_prob(base, tokenizer)
        assert len(tokenizer) == 2051 and tokenizer.convert_ids_to_tokens(2049) == MARKERS[0]
        assert trained > untrained + 2.0, (untrained, trained)  # measured -7.68 -> -1.94

    def test_only_the_new_rows_move_and_they_come_back_exactly(self, tiny_model_dir, run_dir):
        adapter = adapter_of(run_dir)
        saved = load_file(os.path.join(adapter, "adapter_model.safetensors"))
        model, tokenizer = load_for_inference(tiny_model_dir, adapter)
        ids = torch.arange(len(tokenizer))
        with torch.no_grad():
            rows = model.get_input_embeddings()(ids)
        reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        resize_embeddings_for(tokenizer, reference)
        base_rows = reference.get_input_embeddings().weight
        assert torch.equal(rows[:2049], base_rows[:2049])
        assert torch.equal(rows[2049:], saved["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"])
        assert not torch.equal(rows[2049:], base_rows[2049:])

    def test_the_merged_model_holds_the_trained_rows_and_tokenizer(self, tiny_model_dir, run_dir, tmp_path):
        adapter = adapter_of(run_dir)
        saved = load_file(os.path.join(adapter, "adapter_model.safetensors"))
        model, tokenizer = load_for_inference(tiny_model_dir, adapter, bits=16, compute_dtype="float32")
        merge_adapter(tiny_model_dir, adapter, str(tmp_path / "merged"), dtype="float32")
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
        merged_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
        assert merged_tokenizer.convert_tokens_to_ids(MARKERS) == [2049, 2050]
        head = "base_model.model.lm_head.token_adapter.trainable_tokens_delta"
        assert torch.equal(merged.get_output_embeddings().weight[2049:], saved[head])
        prompt = tokenizer(f"### Human: {QUESTION}### Assistant:{MARKERS[0]}", return_tensors="pt")
        with torch.no_grad():
            gap = (merged(**prompt).logits - model(**prompt).logits).abs().max().item()
        assert gap < 1e-4, gap  # measured 1.9e-6

    def test_the_gguf_file_holds_the_new_tokens_and_their_rows(self, tiny_model_dir, run_dir, tmp_path):
        from gguf import GGUFReader

        merged_dir = tmp_path / "merged"
        merge_adapter(tiny_model_dir, adapter_of(run_dir), str(merged_dir), dtype="float32", gguf_type="f16")
        gguf_only = tmp_path / "gguf-only"
        gguf_only.mkdir()
        shutil.copy(merged_dir / "model.gguf", gguf_only / "model.gguf")  # nothing else is read
        from_gguf = AutoTokenizer.from_pretrained(gguf_only, gguf_file="model.gguf")
        text = f"### Human: {QUESTION}### Assistant:{MARKERS[0]}3*8{MARKERS[1]}"
        ids = AutoTokenizer.from_pretrained(merged_dir)(text, return_tensors="pt")["input_ids"]
        assert from_gguf(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
        assert from_gguf.convert_tokens_to_ids(MARKERS) == [2049, 2050]
        reader = GGUFReader(merged_dir / "model.gguf")
        types = reader.fields["tokenizer.ggml.token_type"]
        assert [int(types.parts[types.data[i]][0]) for i in (2049, 2050)] == [4, 4]  # user-defined: never split
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
        read_back = AutoModelForCausalLM.from_pretrained(gguf_only, gguf_file="model.gguf", dtype=torch.float32)
        with torch.no_grad():
            gap = (read_back(ids).logits - merged(ids).logits).abs().max().item()
        assert gap < 1e-2, gap

    def test_a_resumed_run_ends_on_the_same_rows(self, tiny_model_dir, data_file, run_dir, tmp_path):
        resumed = tmp_path / "resumed"
        shutil.copytree(run_dir, resumed)
        shutil.rmtree(resumed / f"checkpoint-{STEPS}")
        (resumed / "completed").unlink(missing_ok=True)
        run_python(flags(tiny_model_dir, data_file, resumed))
        straight = load_file(os.path.join(adapter_of(run_dir), "adapter_model.safetensors"))
        again = load_file(os.path.join(adapter_of(resumed), "adapter_model.safetensors"))
        assert straight.keys() == again.keys()
        assert all(torch.equal(straight[name], again[name]) for name in straight)


class TestMismatchedTokens:
    def test_an_adapter_on_a_tokenizer_without_its_tokens_is_one_line(self, tiny_model_dir, run_dir):
        tokenizer = load_tokenizer(tiny_model_dir)  # the base's own: no markers
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        resize_embeddings_for(tokenizer, model)
        with pytest.raises(ModelError, match=r"trains the rows of added tokens \(ids 2049-2050\) but the base under "
                                             r"it has 2049 embedding rows"):
            load_adapter(model, adapter_of(run_dir))

    def test_continuing_needs_the_same_tokens(self, tiny_model_dir, run_dir):
        tokenizer, config = load_tokenizer(tiny_model_dir), read_adapter_config(adapter_of(run_dir))
        with pytest.raises(ModelError, match=r"was trained with --new_tokens <\|calc\|>,<\|end_calc\|>; this run "
                                             r"has none"):
            check_adapter_tokens(adapter_of(run_dir), config, tokenizer, [])
        other = add_new_tokens(tokenizer, ["<|calc_start|>", "<|calc_stop|>"])  # same ids, other tokens
        with pytest.raises(ModelError, match=r"this run has --new_tokens <\|calc_start\|>,<\|calc_stop\|>"):
            check_adapter_tokens(adapter_of(run_dir), config, tokenizer, other)

    def test_an_adapter_without_token_rows_takes_no_new_tokens(self, tiny_model_dir, random_adapter_dir):
        tokenizer = load_tokenizer(tiny_model_dir)
        ids = add_new_tokens(tokenizer, MARKERS)
        config = read_adapter_config(random_adapter_dir)
        with pytest.raises(ModelError, match=r"was trained with no --new_tokens; this run has --new_tokens"):
            check_adapter_tokens(random_adapter_dir, config, tokenizer, ids)
        check_adapter_tokens(random_adapter_dir, config, load_tokenizer(tiny_model_dir), [])  # neither: nothing to say
