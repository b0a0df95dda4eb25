"""qlorakit.memory: each component against values computed by hand, and the activation
coefficients against a measurement."""

import importlib.util
import itertools
import os

import pytest

from conftest import REPO_ROOT

from qlorakit import memory as em
from qlorakit.model_skeleton import preset_shape

BENCHMARK = os.path.join(REPO_ROOT, "benchmarks", "activation_bytes.py")

LLAMA_7B = preset_shape("llama-7b")
MB = 2**20


def test_nf4_bits_per_param():
    # 4-bit codes + one 8-bit absmax per 64 weights + one fp32 constant per 256 blocks
    assert em.bits_per_param(4, double_quant=True) == 4 + 8 / 64 + 32 / (64 * 256) == 4.126953125
    # without double quant: one fp32 absmax per 64 weights = 0.5 bit
    assert em.bits_per_param(4, double_quant=False) == 4.5
    with pytest.raises(ValueError):
        em.bits_per_param(16)  # not quantized: stored in the model's dtype


def test_llama_7b_linear_params_and_4bit_base():
    # per layer: q,k,v,o 4 * 4096^2 = 67,108,864; gate,up,down 3 * 4096 * 11008 = 135,266,304
    per_layer = 67_108_864 + 135_266_304
    assert em.base_linear_params(LLAMA_7B) == 32 * per_layer == 6_476_005_376
    # 6,476,005,376 / 8 bytes * (4 + 1/8 + 1/512) = 3,238,002,688 + 101,187,584 + 1,581,056
    assert em.quantized_base_bytes(LLAMA_7B, 4, True) == 3_340_771_328
    # int8: one byte per weight + one fp32 scale per output row (32 layers * (4*4096 + 2*11008 + 4096))
    rows = 32 * (4 * 4096 + 2 * 11008 + 4096)
    assert em.quantized_base_bytes(LLAMA_7B, 8) == 6_476_005_376 + 4 * rows
    # unquantized: loaded in bf16 with --bf16, in fp32 without, whether --bits says 16 or 32
    assert em.quantized_base_bytes(LLAMA_7B, 16) == em.quantized_base_bytes(LLAMA_7B, 32) == 2 * 6_476_005_376
    assert em.quantized_base_bytes(LLAMA_7B, 16, bf16=False) == 4 * 6_476_005_376
    with pytest.raises(ValueError):
        em.quantized_base_bytes(LLAMA_7B, 2)


def test_embeddings_norms_and_tied_head():
    assert em.embedding_bytes(LLAMA_7B) == 2 * 32000 * 4096 * 2 == 524_288_000  # 500 MB, bf16
    tied = em.ModelShape(64, 128, 2, 4, 100, tie_word_embeddings=True)
    assert em.embedding_bytes(tied) == 100 * 64 * 2
    assert em.norm_bytes(LLAMA_7B) == (2 * 32 + 1) * 4096 * 2  # bf16 by default
    assert em.norm_bytes(LLAMA_7B, norms_in_fp32=True) == (2 * 32 + 1) * 4096 * 4


def test_lora_params_llama_7b_r64():
    # per layer q,k,v,o: 4 * 64 * (4096 + 4096); gate, up: 2 * 64 * (4096 + 11008); down: 64 * (11008 + 4096)
    per_layer = 4 * 64 * 8192 + 2 * 64 * 15104 + 64 * 15104
    assert per_layer == 4_997_120
    assert em.parse_lora_modules("all", LLAMA_7B) == ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                       "up_proj", "v_proj")
    assert em.lora_params(LLAMA_7B, 64, em.parse_lora_modules("all", LLAMA_7B)) == 32 * per_layer == 159_907_840
    assert em.lora_params(LLAMA_7B, 64, em.parse_lora_modules("q_proj,v_proj", LLAMA_7B)) == 32 * 2 * 64 * 8192
    # the head is adapted only when named: hidden -> vocab
    assert em.lora_params(LLAMA_7B, 64, em.parse_lora_modules("lm_head", LLAMA_7B)) == 64 * (4096 + 32000)
    for bad in ("q_proj,wrong", "", " , "):
        with pytest.raises(ValueError, match="down_proj, gate_proj, k_proj, lm_head, o_proj"):
            em.parse_lora_modules(bad, LLAMA_7B)


def test_lora_weights_gradients_and_optimizer_states():
    n = 159_907_840
    assert em.lora_weight_bytes(n) == em.lora_grad_bytes(n) == 2 * n  # bf16
    assert em.lora_weight_bytes(n, 4) == 4 * n
    assert em.optimizer_bytes(n, "paged_adamw_32bit") == 8 * n  # two fp32 states
    assert em.optimizer_bytes(n, "paged_adamw_8bit") == n * 2 * (1 + 4 / 256)
    assert em.optimizer_bytes(n, "adamw_torch", 2) == 4 * n  # torch keeps states in the param dtype
    with pytest.raises(ValueError):
        em.optimizer_bytes(n, "sgd")


def test_activation_components_bf16_norms():
    batch, seq, tokens = 2, 528, 2 * 528
    # bf16 layer inputs, one per layer
    assert em.checkpoint_activation_bytes(LLAMA_7B, batch, seq) == 32 * tokens * 4096 * 2
    assert em.checkpoint_activation_bytes(LLAMA_7B, batch, seq, gradient_checkpointing=False) == 0
    # 20 per hidden, 8 per intermediate, 14 per LoRA rank, 8 per token; sdpa: 4 per head and token
    core = tokens * (20 * 4096 + 8 * 11008 + 14 * 64 + 8)
    sdpa = core + tokens * 4 * 32
    assert em.layer_saved_bytes(LLAMA_7B, batch, seq, "sdpa", lora_dropout=0.0) == sdpa
    assert em.layer_saved_bytes(LLAMA_7B, batch, seq, "flash_attention_2", 0.0) == sdpa
    assert em.layer_saved_bytes(LLAMA_7B, batch, seq, "sdpa", 0.0, lora_r=8) == sdpa - tokens * 14 * 56
    # dropout: 18 per hidden (20 with sdpa, whose saved output dropout cannot free) + 2 per intermediate
    assert em.layer_saved_bytes(LLAMA_7B, batch, seq, "sdpa", 0.1) == sdpa + tokens * (20 * 4096 + 2 * 11008)
    scores = 2 * 32 * 528 * 528
    assert em.layer_saved_bytes(LLAMA_7B, batch, seq, "eager", 0.0) == core + 6 * scores
    assert em.layer_saved_bytes(LLAMA_7B, batch, seq, "eager", 0.1) == (
        core + tokens * (18 * 4096 + 2 * 11008) + 6 * scores)
    # assumed temporaries: two bf16 gradients of each width (+ an fp32 score gradient for eager)
    temp = tokens * 2 * 2 * (4096 + 11008)
    assert em.backward_temporary_bytes(LLAMA_7B, batch, seq) == temp
    assert em.backward_temporary_bytes(LLAMA_7B, batch, seq, "eager") == temp + 4 * scores
    assert em.layer_activation_bytes(LLAMA_7B, batch, seq, True, "sdpa", 0.0) == sdpa + temp
    # without checkpointing every layer's set; a bf16 layer input is not saved by the layer itself
    assert em.saved_input_bytes(LLAMA_7B, batch, seq) == 0
    assert em.layer_activation_bytes(LLAMA_7B, batch, seq, False, "sdpa", 0.0) == 32 * sdpa + temp
    assert em.dequant_buffer_bytes(LLAMA_7B, 4) == 4096 * 11008 * 2
    assert em.dequant_buffer_bytes(LLAMA_7B, 16) == 0
    assert em.logits_bytes(LLAMA_7B, batch, seq) == tokens * 32000 * (2 + 4 + 4)


def test_activation_components_fp32_norms():
    batch, seq, tokens = 2, 528, 2 * 528
    fp32 = {"norms_in_fp32": True}
    # the fp32 residual stream: 4 bytes per layer input
    assert em.checkpoint_activation_bytes(LLAMA_7B, batch, seq, **fp32) == 32 * tokens * 4096 * 4
    sdpa = tokens * (22 * 4096 + 14 * 11008 + 14 * 64 + 8 + 4 * 32)
    assert em.layer_saved_bytes(LLAMA_7B, batch, seq, "sdpa", 0.0, **fp32) == sdpa
    assert em.layer_saved_bytes(LLAMA_7B, batch, seq, "sdpa", 0.1, **fp32) == sdpa + tokens * (14 * 4096 + 2 * 11008)
    temp = tokens * 2 * 4 * (4096 + 11008)  # two fp32 gradients of each width
    assert em.backward_temporary_bytes(LLAMA_7B, batch, seq, **fp32) == temp
    # the layer saves its fp32 input itself: without checkpointing it stays, once per layer
    layer_input = tokens * 4096 * 4
    assert em.saved_input_bytes(LLAMA_7B, batch, seq, **fp32) == layer_input
    assert em.layer_activation_bytes(LLAMA_7B, batch, seq, True, "sdpa", 0.0, **fp32) == sdpa + temp
    assert em.layer_activation_bytes(LLAMA_7B, batch, seq, False, "sdpa", 0.0, **fp32) == (
        32 * (sdpa + layer_input) + temp)


def test_activation_components_fp32_training():
    """Without --bf16 the whole model runs in fp32: its own measured coefficients."""
    batch, seq, tokens = 2, 528, 2 * 528
    fp32 = {"bf16": False}
    assert em.checkpoint_activation_bytes(LLAMA_7B, batch, seq, **fp32) == 32 * tokens * 4096 * 4
    # 28 per hidden, 16 per intermediate, 28 per LoRA rank (fp32 A outputs), 8 per token
    core = tokens * (28 * 4096 + 16 * 11008 + 28 * 64 + 8)
    sdpa = core + tokens * 4 * 32
    assert em.layer_saved_bytes(LLAMA_7B, batch, seq, "sdpa", 0.0, **fp32) == sdpa
    # dropout: 36 per hidden (40 with sdpa) + 4 per intermediate: twice the bf16 extra
    assert em.layer_saved_bytes(LLAMA_7B, batch, seq, "sdpa", 0.1, **fp32) == sdpa + tokens * (40 * 4096 + 4 * 11008)
    scores = 2 * 32 * 528 * 528
    assert em.layer_saved_bytes(LLAMA_7B, batch, seq, "eager", 0.0, **fp32) == core + 4 * scores  # no bf16 copy
    # norms_in_fp32 changes nothing when everything is fp32 already
    assert em.layer_saved_bytes(LLAMA_7B, batch, seq, "sdpa", 0.0, norms_in_fp32=True, **fp32) == sdpa
    assert em.saved_input_bytes(LLAMA_7B, batch, seq, **fp32) == tokens * 4096 * 4
    assert em.dequant_buffer_bytes(LLAMA_7B, 4, **fp32) == 4096 * 11008 * 4
    assert em.logits_bytes(LLAMA_7B, batch, seq, **fp32) == tokens * 32000 * (4 + 4)  # no fp32 copy to make
    assert em.norm_bytes(LLAMA_7B, **fp32) == (2 * 32 + 1) * 4096 * 4


def test_estimate_without_bf16_keeps_parameters_in_fp32():
    bf16, fp32 = em.estimate(LLAMA_7B), em.estimate(LLAMA_7B, bf16=False)
    for name in ("embeddings_and_lm_head", "lora_weights", "lora_gradients", "checkpointed_activations",
                 "dequantized_weight_buffer"):
        assert fp32[name] == 2 * bf16[name], name
    assert fp32["quantized_base_weights"] == bf16["quantized_base_weights"]  # 4-bit either way
    assert fp32["optimizer_states"] == bf16["optimizer_states"]  # paged_adamw_32bit: fp32 states either way
    assert em.estimate(LLAMA_7B, optim="adamw_torch", bf16=False)["optimizer_states"] == 2 * em.estimate(
        LLAMA_7B, optim="adamw_torch")["optimizer_states"]
    assert fp32["layer_activations"] > em.estimate(LLAMA_7B, norms_in_fp32=True)["layer_activations"]


def test_longest_row_and_attention_default():
    assert em.longest_row(16, 512) == 528
    assert em.longest_row(16, 512, max_seq_len=2048) == 2048  # chat data cut at --max_seq_len
    assert em.longest_row(16, 512, max_seq_len=100) == 528  # instruction rows still reach source + target
    assert em.estimate(LLAMA_7B, max_seq_len=1056)["logits"] == 2 * em.estimate(LLAMA_7B)["logits"]
    assert em.estimate(LLAMA_7B, attn_implementation=None) == em.estimate(LLAMA_7B, attn_implementation="sdpa")


def test_fp32_norms_cost_more_in_every_activation_setting():
    for attn, dropout, checkpointing in itertools.product(("sdpa", "eager"), (0.0, 0.1), (True, False)):
        args = (LLAMA_7B, 1, 528, checkpointing, attn, dropout)
        assert em.layer_activation_bytes(*args, norms_in_fp32=True) > em.layer_activation_bytes(*args)


def test_coefficients_match_a_measurement_at_unfitted_sizes(tmp_path):
    """benchmarks/activation_bytes.py fits its coefficients at heads 32 wide and intermediate
    192/384; measure one layer at LLaMA's head width 128, intermediate 352 and another rank."""
    spec = importlib.util.spec_from_file_location("activation_bytes", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.save_model(str(tmp_path), 128, 352, head_dim=128)
    shape = em.ModelShape(128, 352, bench.NUM_LAYERS, 1, 256)
    for norms_in_fp32, dropout, attn, bf16 in [(False, 0.1, "sdpa", True), (False, 0.0, "eager", True),
                                               (True, 0.0, "sdpa", True), (True, 0.1, "eager", True),
                                               (False, 0.1, "sdpa", False), (False, 0.0, "eager", False)]:
        model = bench.load(str(tmp_path), norms_in_fp32, dropout, attn, 16, bf16)
        saved, layer_input, input_saved = bench.measure(model, 48, bf16)
        assert saved == em.layer_saved_bytes(shape, bench.BATCH, 48, attn, dropout, norms_in_fp32, lora_r=16, bf16=bf16)
        assert layer_input.numel() * layer_input.element_size() == (
            em.checkpoint_activation_bytes(shape, bench.BATCH, 48, True, norms_in_fp32, bf16) / shape.num_layers)
        assert input_saved == (em.saved_input_bytes(shape, bench.BATCH, 48, norms_in_fp32, bf16) > 0)


def test_estimate_sums_the_components():
    components = em.estimate(LLAMA_7B)
    assert components["quantized_base_weights"] == 3_340_771_328
    assert components["optimizer_states"] == 8 * 159_907_840
    assert components["cuda_context_overhead"] == 768 * MB
    assert components["checkpointed_activations"] == 32 * 528 * 4096 * 2  # seq = 16 + 512, bf16
    assert components["norms"] == (2 * 32 + 1) * 4096 * 2
    reference = em.estimate(LLAMA_7B, norms_in_fp32=True)
    assert reference["checkpointed_activations"] == 2 * components["checkpointed_activations"]
    assert reference["norms"] == 2 * components["norms"]
    assert reference["layer_activations"] > components["layer_activations"]
    changed = {name for name in components if components[name] != reference[name]}
    assert changed == {"norms", "checkpointed_activations", "layer_activations"}
    # the NF4 + double quant floor (4.127 bits per weight): ~3.9 GB decimal with bf16 embeddings and head
    base = components["quantized_base_weights"] + components["embeddings_and_lm_head"]
    assert 3.85e9 < base < 3.9e9


@pytest.mark.parametrize("norms_in_fp32", [False, True])
def test_paper_claims_65b_fits_48gb_not_24gb(norms_in_fp32):
    components = em.estimate(preset_shape("llama-65b"), norms_in_fp32=norms_in_fp32)
    base = components["quantized_base_weights"] + components["embeddings_and_lm_head"]
    assert 34.4e9 < base < 34.5e9  # the same floor for 65B: 34.5 GB
    assert em.summarize(components, 48, "paged_adamw_32bit")["fits"]
    report = em.summarize(components, 24, "paged_adamw_32bit")
    assert not report["fits"] and not report["fits_with_paging"]
