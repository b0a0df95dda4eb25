"""Quantizing the base with bitsandbytes: the BitsAndBytesConfig a BaseLoading record means, the
linear layers transformers' loader skips (quantized here after loading), and the way back to
plain layers for merging (dequantize_base).
"""

import bitsandbytes as bnb
import torch
from transformers import BitsAndBytesConfig
from transformers.pytorch_utils import Conv1D
from transformers.quantizers.quantizers_utils import should_convert_module

from .errors import ModelError
from .layers import QUANTIZED_LINEAR_TYPES, UNCALLED_LINEAR_TYPES, count_linear_layers


def build_quantization_config(loading, quant_storage=torch.uint8):
    """The BitsAndBytesConfig of a BaseLoading record (4 or 8 bits); None for 16/32-bit (plain LoRA
    or full finetuning). The one place that says what each quantization setting of the record means.

    quant_storage: the dtype that packs the 4-bit weights. FSDP and ZeRO-3 shard flat tensors of
    one dtype, so sharded training stores them in the compute dtype (bf16) instead of uint8.
    """
    if loading.bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=getattr(torch, loading.compute_dtype),
            bnb_4bit_use_double_quant=loading.double_quant,
            bnb_4bit_quant_type=loading.quant_type,
            bnb_4bit_quant_storage=quant_storage,
        )
    if loading.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def quantized_copy(linear, quantization_config):
    """A bitsandbytes layer computing `linear`'s map with its weights quantized as configured."""
    config, weight = quantization_config, linear.weight.data
    has_bias = linear.bias is not None
    if config.load_in_4bit:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, has_bias, config.bnb_4bit_compute_dtype,
                                  compress_statistics=config.bnb_4bit_use_double_quant,
                                  quant_type=config.bnb_4bit_quant_type, quant_storage=config.bnb_4bit_quant_storage,
                                  device="meta")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=config.bnb_4bit_use_double_quant,
                                         quant_type=config.bnb_4bit_quant_type,
                                         quant_storage=config.bnb_4bit_quant_storage, module=layer)
    else:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, has_bias,
                                    has_fp16_weights=config.llm_int8_has_fp16_weight,
                                    threshold=config.llm_int8_threshold, device="meta")
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=config.llm_int8_has_fp16_weight)
    if has_bias:
        layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    layer.source_cls = type(linear)
    return layer.to(weight.device)  # bitsandbytes quantizes on the move to a real device


def skipped_linear_layers(model, modules_to_not_convert):
    """Linear layers transformers left unquantized only because their class subclasses nn.Linear.

    Its bitsandbytes integration converts exactly nn.Linear and Conv1D, so Falcon's FalconLinear
    (the same map with its own forward) stays 16-bit. The head and the modules the quantizer keeps
    on purpose (T5's fp32 `wo`) are not skipped layers.
    """
    head = model.get_output_embeddings()
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and type(module) is not torch.nn.Linear
            and not isinstance(module, (*QUANTIZED_LINEAR_TYPES, *UNCALLED_LINEAR_TYPES))
            and module is not head and should_convert_module(name, modules_to_not_convert)]


def ensure_quantized(model, quantization_config, name):
    """Quantize the linear layers the loader skipped; refuse a "4-bit" model with no 4-bit layer."""
    if quantization_config is None:
        return model
    for layer_name in skipped_linear_layers(model, model.hf_quantizer.modules_to_not_convert):
        model.set_submodule(layer_name, quantized_copy(model.get_submodule(layer_name), quantization_config))
    quantized, _, _ = count_linear_layers(model)
    if not quantized:
        bits = 4 if quantization_config.load_in_4bit else 8
        raise ModelError(f"{name}: no linear layer of {type(model).__name__} could be quantized to {bits} bits; "
                         "train it with --bits 16")
    return model


def dequantize_base(model, dtype):
    """The quantized base with its weights dequantized into plain layers of `dtype`.

    transformers turns every quantized layer back into nn.Linear; GPT-2-style layers were Conv1D
    (weight stored transposed) and go back to Conv1D, so the saved model loads as its own class.
    """
    conv1d = [name for name, module in model.named_modules()
              if isinstance(module, QUANTIZED_LINEAR_TYPES) and getattr(module, "source_cls", None) is Conv1D]
    model = model.dequantize(dtype=dtype)
    for name in conv1d:
        linear = model.get_submodule(name)
        layer = Conv1D(linear.out_features, linear.in_features)
        layer.weight = torch.nn.Parameter(linear.weight.data.T.contiguous(), requires_grad=False)
        layer.bias = linear.bias
        model.set_submodule(name, layer.to(linear.weight.device))
    return model
