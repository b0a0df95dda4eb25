import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoModelForCausalLM

from qlorakit.model import (build_quantization_config, describe_parameters, find_linear_module_names,
                            load_tokenizer, resize_embeddings_for)

LLAMA_PROJECTIONS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def quantized_model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=build_quantization_config(4, compute_dtype=torch.bfloat16),
        device_map={"": "cpu"}, dtype=torch.bfloat16,
    )


def test_quantization_config_per_bits():
    config = build_quantization_config(4, "fp4", double_quant=False, compute_dtype=torch.bfloat16)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4" and not config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert build_quantization_config(8).load_in_8bit
    assert build_quantization_config(16) is None and build_quantization_config(32) is None


def test_linear_layers_are_found_by_type_without_the_head(quantized_model):
    assert find_linear_module_names(quantized_model) == LLAMA_PROJECTIONS
    assert isinstance(quantized_model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)


def test_parameter_report_shows_4bit_storage(quantized_model):
    lines = describe_parameters(quantized_model)
    assert lines[0].startswith("trainable params:")
    assert any(line.startswith("torch.uint8") for line in lines)


def test_pad_token_is_added_and_new_rows_are_the_mean(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    old_rows = model.get_input_embeddings().weight.shape[0]
    assert tokenizer.pad_token == "[PAD]" and len(tokenizer) == old_rows + 1
    resize_embeddings_for(tokenizer, model)
    for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = embedding.weight.detach()
        assert weight.shape[0] == old_rows + 1
        torch.testing.assert_close(weight[-1], weight[:-1].mean(dim=0))


def test_llama_bos_is_id_1(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
