"""The memory estimate reads each architecture as training loads it: LoRA's trainable parameters and the
4-bit layers counted on a weightless skeleton equal those of the real tiny model (peft, bitsandbytes)."""

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig

from qlorakit import memory as em
from qlorakit.base_loading import BaseLoading
from qlorakit.base_model import AUTO_MODEL_CLASSES, model_task
from qlorakit.cli.make_tiny_model import ARCHITECTURES, build_model
from qlorakit.layers import QUANTIZED_LINEAR_TYPES, base_linear_layers, short_name
from qlorakit.lora import PEFT_TASK_TYPES, lora_target_modules
from qlorakit.model_skeleton import load_shape, preset_shape
from qlorakit.quantization import build_quantization_config, ensure_quantized

R = 4


def tiny_model_dir(arch, directory):
    """A real tiny model of `arch` (2 layers, 64 wide) saved with its config; returns the model."""
    model = build_model(512, 64, 2, seed=0, arch=arch)
    model.save_pretrained(directory)
    return model


def peft_trainable(model, lora_modules):
    """Trainable parameters of the model wrapped as qlora.py wraps it (qlorakit.training_model.attach_lora)."""
    task = model_task(model.config, "tiny")
    config = LoraConfig(r=R, lora_alpha=8, target_modules=lora_target_modules(model, lora_modules), bias="none",
                        task_type=PEFT_TASK_TYPES[task])
    for param in model.parameters():
        param.requires_grad_(False)
    peft_model = get_peft_model(model, config)
    return sum(param.numel() for param in peft_model.parameters() if param.requires_grad)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_lora_count_equals_peft_on_the_real_model(arch, tmp_path):
    model = tiny_model_dir(arch, tmp_path)
    shape = load_shape(str(tmp_path))
    estimated = em.lora_params(shape, R, em.parse_lora_modules("all", shape))
    assert estimated == peft_trainable(model, "all")
    components = em.estimate(shape, lora_r=R, bf16=False)
    assert components["lora_weights"] == 4 * estimated and components["optimizer_states"] == 8 * estimated


@pytest.mark.parametrize("arch, lora_modules", [("gpt2", "c_attn,lm_head"), ("gpt-neox", "query_key_value"),
                                                ("phi3", "qkv_proj, gate_up_proj"), ("t5", "q,v")])
def test_named_layers_and_the_head_count_as_peft_adapts_them(arch, lora_modules, tmp_path):
    model = tiny_model_dir(arch, tmp_path)
    shape = load_shape(str(tmp_path))
    assert em.lora_params(shape, R, em.parse_lora_modules(lora_modules, shape)) == peft_trainable(model, lora_modules)


def loaded_4bit_layers(model_dir):
    """(short name, in, out) of every 4-bit layer of the model loaded as qlora.py loads it."""
    config = AutoConfig.from_pretrained(model_dir)
    quantization = build_quantization_config(BaseLoading(compute_dtype="float32"))
    model = AUTO_MODEL_CLASSES[model_task(config, model_dir)].from_pretrained(
        model_dir, quantization_config=quantization, device_map={"": "cpu"})
    model = ensure_quantized(model, quantization, model_dir)
    return sorted((short_name(name), module.in_features, module.out_features)
                  for name, module in base_linear_layers(model) if isinstance(module, QUANTIZED_LINEAR_TYPES))


@pytest.mark.parametrize("arch", ["gpt2", "falcon", "t5"])
def test_quantized_layers_are_the_ones_a_4bit_load_quantizes(arch, tmp_path):
    """GPT-2's Conv1D and Falcon's Linear subclass are quantized; T5's wo and every head are not."""
    tiny_model_dir(arch, tmp_path)
    shape = load_shape(str(tmp_path))
    estimated = sorted((layer.name, layer.in_features, layer.out_features)
                       for layer in shape.linear_layers if layer.quantized)
    assert estimated == loaded_4bit_layers(str(tmp_path))
    kept = [layer for layer in em.base_layers(shape) if not layer.quantized]
    assert {layer.name for layer in kept} == ({"wo"} if arch == "t5" else set())
    kept_weights = sum(layer.weights for layer in kept)  # in bf16 with --bf16
    quantized_weights = em.base_linear_params(shape) - kept_weights
    assert em.quantized_base_bytes(shape) == quantized_weights * em.bits_per_param(4) / 8 + 2 * kept_weights


def test_unknown_lora_module_names_the_models_linear_layers(tmp_path):
    tiny_model_dir("gpt-neox", tmp_path)
    shape = load_shape(str(tmp_path))
    with pytest.raises(ValueError) as error:
        em.parse_lora_modules("q_proj,v_proj", shape)
    assert str(error.value) == ("--lora_modules: 'all' or a comma list of this model's linear layers, dense, "
                                "dense_4h_to_h, dense_h_to_4h, lm_head, query_key_value; got 'q_proj,v_proj'")


def test_preset_is_the_llama_skeleton():
    shape = preset_shape("llama-13b")
    assert (shape.hidden_size, shape.intermediate_size, shape.num_layers, shape.num_heads, shape.vocab_size) == (
        5120, 13824, 40, 40, 32000)
    assert shape.all_lora_targets == ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")
    assert len(shape.linear_layers) == 40 * 7 + 1 and shape.linear_layers[-1].head
