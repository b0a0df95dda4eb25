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


def lora_model_and_residual_dtype(tiny_model_dir, norms_in_fp32):
    """A bf16 4-bit LoRA model as qlora.py builds it, its loss on one batch and the dtype of the
    residual stream that leaves the first decoder layer."""
    from qlorakit.config import parse_arguments
    from qlorakit.model import load_model

    _, _, training_args, _ = parse_arguments([
        "--model_name_or_path", tiny_model_dir, "--output_dir", "unused", "--use_cpu", "--bf16",
        "--lora_r", "8", "--norms_in_fp32", str(norms_in_fp32)])
    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = load_model(parse_arguments(["--model_name_or_path", tiny_model_dir])[0], training_args, tokenizer)
    for name, param in model.named_parameters():  # LoRA B starts at zero; make the adapter matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    seen = {}

    def record_dtype(module, args, output):
        seen["dtype"] = (output[0] if isinstance(output, tuple) else output).dtype

    model.base_model.model.model.layers[0].register_forward_hook(record_dtype)
    ids = torch.randint(3, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    return model, loss.item(), seen["dtype"]


def test_norms_stay_bf16_by_default_and_match_fp32_norms_in_loss(tiny_model_dir):
    model, loss, residual_dtype = lora_model_and_residual_dtype(tiny_model_dir, norms_in_fp32=False)
    norm_dtypes = {p.dtype for n, p in model.named_parameters() if "norm" in n}
    assert norm_dtypes == {torch.bfloat16} and residual_dtype == torch.bfloat16

    model, loss_fp32_norms, residual_dtype = lora_model_and_residual_dtype(tiny_model_dir, norms_in_fp32=True)
    assert {p.dtype for n, p in model.named_parameters() if "norm" in n} == {torch.float32}
    assert residual_dtype == torch.float32  # bitsandbytes returns fp32 for the fp32 norm outputs
    assert loss == pytest.approx(loss_fp32_norms, rel=5e-4)
