import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoModelForCausalLM

from qlorakit.base_loading import BaseLoading
from qlorakit.layers import describe_parameters, find_linear_module_names
from qlorakit.quantization import build_quantization_config
from qlorakit.tokenizer import load_tokenizer, resize_embeddings_for

FP32_4BIT = BaseLoading(compute_dtype="float32")
LLAMA_PROJECTIONS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def quantized_model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=build_quantization_config(BaseLoading()),
        device_map={"": "cpu"}, dtype=torch.bfloat16,
    )


def test_quantization_config_per_bits():
    config = build_quantization_config(BaseLoading(4, "fp4", double_quant=False, compute_dtype="bfloat16"))
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4" and not config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert build_quantization_config(BaseLoading(bits=8)).load_in_8bit
    assert all(build_quantization_config(BaseLoading(bits=bits)) is None for bits in (16, 32))


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
    from qlorakit.training_model import load_model

    arguments = parse_arguments([
        "--model_name_or_path", tiny_model_dir, "--output_dir", "unused", "--use_cpu", "--bf16",
        "--lora_r", "8", "--norms_in_fp32", str(norms_in_fp32)])
    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = load_model(arguments, tokenizer)
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


def build_tiny(arch, path, **kwargs):
    from qlorakit.cli.make_tiny_model import make_tiny_model

    make_tiny_model(str(path), arch, hidden_size=64, num_layers=2, vocab_size=512, **kwargs)
    return str(path)


@pytest.fixture(scope="module")
def tiny_falcon(tmp_path_factory):
    return build_tiny("falcon", tmp_path_factory.mktemp("falcon"))


def load_falcon_4bit(model_dir):
    """As transformers loads it: its bitsandbytes integration converts only exact nn.Linear."""
    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=build_quantization_config(FP32_4BIT),
                                                device_map={"": "cpu"}, dtype=torch.float32)


class TestSkippedLinearLayers:
    def test_falcon_linear_layers_are_quantized_after_loading(self, tiny_falcon):
        from qlorakit.layers import count_linear_layers
        from qlorakit.quantization import ensure_quantized

        model = load_falcon_4bit(tiny_falcon)
        assert count_linear_layers(model)[0] == 0  # transformers left every FalconLinear in 16-bit
        batch = torch.tensor([[5, 6, 7, 8]])
        with torch.no_grad():
            before = model(batch).logits
        model = ensure_quantized(model, build_quantization_config(FP32_4BIT), tiny_falcon)
        assert count_linear_layers(model)[:2] == (8, 9)
        assert isinstance(model.transformer.h[0].self_attention.query_key_value, bnb.nn.Linear4bit)
        with torch.no_grad():
            after = model(batch).logits
        gap = (after - before).abs().max().item()
        assert 0 < gap < 0.5  # NF4 rounding, not a different function

    def test_a_model_with_nothing_quantizable_is_refused(self, tiny_falcon):
        from qlorakit.errors import ModelError
        from qlorakit.quantization import ensure_quantized

        model = load_falcon_4bit(tiny_falcon)
        model.hf_quantizer.modules_to_not_convert = ["transformer"]
        with pytest.raises(ModelError, match="no linear layer of FalconForCausalLM could be quantized to 4 bits"):
            ensure_quantized(model, build_quantization_config(FP32_4BIT), tiny_falcon)

    def test_the_report_counts_4bit_layers(self, tiny_falcon):
        from qlorakit.layers import describe_linear_layers
        from qlorakit.quantization import ensure_quantized

        model = ensure_quantized(load_falcon_4bit(tiny_falcon), build_quantization_config(FP32_4BIT), tiny_falcon)
        assert describe_linear_layers(model) == "4-bit linear layers: 8 of 9 (not quantized: lm_head)"


class TestLayersByType:
    @pytest.mark.parametrize("arch, norms", [
        ("gpt2", {"ln_1", "ln_2", "ln_f"}),
        ("bloom", {"word_embeddings_layernorm", "input_layernorm", "post_attention_layernorm", "ln_f"}),
        ("t5", {"layer_norm", "final_layer_norm"}),
    ])
    def test_norms_are_found_by_type_and_kept_in_fp32(self, arch, norms, tmp_path):
        from qlorakit.layers import is_norm_layer
        from qlorakit.training_model import cast_for_training

        model = AutoModelForCausalLM if arch != "t5" else __import__("transformers").AutoModelForSeq2SeqLM
        model = model.from_pretrained(build_tiny(arch, tmp_path), dtype=torch.bfloat16)
        found = {name.split(".")[-1] for name, module in model.named_modules() if is_norm_layer(module)}
        assert found == norms
        cast_for_training(model, bf16=True, norms_in_fp32=True)
        assert {m.weight.dtype for m in model.modules() if is_norm_layer(m)} == {torch.float32}

    def test_gpt2_conv1d_layers_are_lora_targets_in_16_bit(self, tmp_path):
        from peft import LoraConfig, get_peft_model

        model = AutoModelForCausalLM.from_pretrained(build_tiny("gpt2", tmp_path))
        targets = find_linear_module_names(model)
        assert targets == ["c_attn", "c_fc", "c_proj"]
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
        assert peft_model.peft_config["default"].fan_in_fan_out  # peft flips it for Conv1D


class TestModelTask:
    @pytest.mark.parametrize("model_type, task", [("llama", "causal"), ("falcon", "causal"), ("t5", "seq2seq"),
                                                  ("bart", "seq2seq")])
    def test_task_comes_from_the_config(self, model_type, task):
        from transformers import AutoConfig

        from qlorakit.base_model import model_task

        assert model_task(AutoConfig.for_model(model_type), "m") == task

    def test_neither_causal_nor_seq2seq_is_refused_before_loading(self, tmp_path, run_in_process):
        from transformers import AutoConfig

        from qlorakit.cli import train

        AutoConfig.for_model("distilbert").save_pretrained(tmp_path)  # a config, no weights, no tokenizer
        result = run_in_process(train, ["--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "out"),
                                        "--dataset", "qlorakit/sample_data/alpaca_sample.json"])
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "'distilbert' is neither a causal nor a seq2seq language model" in result.stderr.strip().splitlines()[-1]


def test_an_evaluation_forward_does_not_change_the_next_training_step(tiny_model_dir):
    """An eval-mode forward without gradients (evaluation during training) leaves the base's 4-bit
    layers as training needs them: the next step's gradients are the same as before it.

    On CPUs with AVX512-BF16 bitsandbytes would repack the weights for an inference kernel without
    a backward pass, and the gradients through the base were lost; elsewhere nothing is repacked.
    """
    from qlorakit.config import parse_arguments
    from qlorakit.training_model import load_model

    arguments = parse_arguments(["--model_name_or_path", tiny_model_dir, "--output_dir", "unused", "--use_cpu",
                                 "--lora_r", "8", "--lora_dropout", "0"])
    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = load_model(arguments, tokenizer)
    for name, param in model.named_parameters():  # LoRA B starts at zero: make A's gradients non-zero
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    ids = torch.randint(3, 1000, (2, 16), generator=torch.Generator().manual_seed(0))

    def gradients():
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = gradients()
    assert before.keys() == after.keys()
    assert all(before[name].abs().sum() > 0 for name in before)
    assert all(torch.equal(before[name], after[name]) for name in before)
