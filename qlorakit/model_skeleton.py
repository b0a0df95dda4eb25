"""The model a run would train, as a weightless skeleton: the shape the memory estimate reads.

The skeleton is built from the config alone on the meta device (no weight is read or allocated),
with the model class qlora.py picks for that config (qlorakit.base_model.model_task). Its linear layers
are found by type and LoRA's targets chosen by the functions training uses, and the layers a
4/8-bit load leaves unquantized by transformers' own rule, so the estimate counts what qlora.py
would adapt and quantize, whatever the architecture.
"""

import torch
from transformers import AutoConfig, LlamaConfig
from transformers.pytorch_utils import Conv1D
from transformers.quantizers.base import HfQuantizer
from transformers.quantizers.quantizers_utils import should_convert_module

from .memory import LinearLayer, ModelShape
from .base_model import AUTO_MODEL_CLASSES, model_task
from .layers import UNCALLED_LINEAR_TYPES, base_linear_layers, find_linear_module_names, short_name

# LLaMA-1 shapes (Touvron et al. 2023, Table 2; the Hugging Face conversions' config.json).
LLAMA_CONFIGS = {
    "llama-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32},
    "llama-13b": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40},
    "llama-33b": {"hidden_size": 6656, "intermediate_size": 17920, "num_hidden_layers": 60, "num_attention_heads": 52},
    "llama-65b": {"hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 80, "num_attention_heads": 64},
}
LLAMA_VOCAB_SIZE = 32000


def build_skeleton(config, name):
    """The model class training would load for `config`, with every tensor on the meta device."""
    with torch.device("meta"):
        return AUTO_MODEL_CLASSES[model_task(config, name)].from_config(config)


def linear_features(module):
    """(in_features, out_features) of a linear layer; GPT-2's Conv1D calls them nx and nf."""
    if isinstance(module, Conv1D):
        return module.nx, module.nf
    return module.in_features, module.out_features


def linear_layers(model):
    """Every linear layer of the model, found by type as training finds them. Quantized: what
    transformers' bitsandbytes loader converts (it skips the head, tied and last modules and the
    model's fp32 modules; qlora.py sets no skip list) plus the Linear subclasses qlora.py quantizes
    after it (qlorakit.quantization.ensure_quantized)."""
    kept = HfQuantizer.get_modules_to_not_convert(model, None, model._keep_in_fp32_modules)
    head = model.get_output_embeddings()

    def quantized(name, module):
        return should_convert_module(name, kept) and not isinstance(module, UNCALLED_LINEAR_TYPES)

    return tuple(LinearLayer(short_name(name), *linear_features(module), quantized(name, module), module is head)
                 for name, module in base_linear_layers(model))


def shape_of(model):
    """The estimate's view of a skeleton. The MLP width, which the activation formulas use, is
    the widest input of a linear layer but the head's (LLaMA's down_proj: intermediate_size), so
    configs that name it otherwise (n_inner, d_ff, ffn_dim, none) need no table of spellings."""
    config, layers = model.config, linear_layers(model)
    return ModelShape(
        hidden_size=config.hidden_size,
        intermediate_size=max(layer.in_features for layer in layers if not layer.head),
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        vocab_size=config.vocab_size,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        linear_layers=layers,
        all_lora_targets=tuple(find_linear_module_names(model)),
    )


def shape_from_config(config, name):
    return shape_of(build_skeleton(config, name))


def load_shape(model_name_or_path):
    """Read config.json through AutoConfig (a local directory works offline); no weights."""
    return shape_from_config(AutoConfig.from_pretrained(model_name_or_path), model_name_or_path)


def preset_shape(preset):
    """A built-in LLaMA-1 shape: nothing is read or downloaded."""
    return shape_from_config(LlamaConfig(vocab_size=LLAMA_VOCAB_SIZE, **LLAMA_CONFIGS[preset]), preset)
