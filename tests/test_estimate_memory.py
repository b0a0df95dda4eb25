"""scripts/estimate_memory.py: each component against values computed by hand, and the CLI."""

import importlib.util
import itertools
import json
import os

import pytest

from conftest import REPO_ROOT, run_python

from qlorakit.cli import estimate_memory as em

SCRIPT = os.path.join(REPO_ROOT, "scripts", "estimate_memory.py")
BENCHMARK = os.path.join(REPO_ROOT, "benchmarks", "activation_bytes.py")

LLAMA_7B = em.LLAMA_CONFIGS["llama-7b"]
MB = 2**20


def test_nf4_bits_per_param():
    # 4-bit codes + one 8-bit absmax per 64 weights + one fp32 constant per 256 blocks
    assert em.bits_per_param(4, double_quant=True) == 4 + 8 / 64 + 32 / (64 * 256) == 4.126953125
    # without double quant: one fp32 absmax per 64 weights = 0.5 bit
    assert em.bits_per_param(4, double_quant=False) == 4.5
    assert em.bits_per_param(16) == 16


def test_llama_7b_linear_params_and_4bit_base():
    # per layer: q,k,v,o 4 * 4096^2 = 67,108,864; gate,up,down 3 * 4096 * 11008 = 135,266,304
    per_layer = 67_108_864 + 135_266_304
    assert em.base_linear_params(LLAMA_7B) == 32 * per_layer == 6_476_005_376
    # 6,476,005,376 / 8 bytes * (4 + 1/8 + 1/512) = 3,238,002,688 + 101,187,584 + 1,581,056
    assert em.quantized_base_bytes(LLAMA_7B, 4, True) == 3_340_771_328
    # int8: one byte per weight + one fp32 scale per output row (32 layers * (4*4096 + 2*11008 + 4096))
    rows = 32 * (4 * 4096 + 2 * 11008 + 4096)
    assert em.quantized_base_bytes(LLAMA_7B, 8) == 6_476_005_376 + 4 * rows
    assert em.quantized_base_bytes(LLAMA_7B, 16) == 2 * 6_476_005_376


def test_embeddings_norms_and_tied_head():
    assert em.embedding_bytes(LLAMA_7B) == 2 * 32000 * 4096 * 2 == 524_288_000  # 500 MB, bf16
    tied = em.ModelShape(64, 128, 2, 4, 100, tie_word_embeddings=True)
    assert em.embedding_bytes(tied) == 100 * 64 * 2
    assert em.norm_bytes(LLAMA_7B) == (2 * 32 + 1) * 4096 * 2  # bf16 by default
    assert em.norm_bytes(LLAMA_7B, norms_in_fp32=True) == (2 * 32 + 1) * 4096 * 4


def test_lora_params_one_llama_7b_layer_r64():
    # q,k,v,o: 4 * 64 * (4096 + 4096); gate, up: 2 * 64 * (4096 + 11008); down: 64 * (11008 + 4096)
    expected = 4 * 64 * 8192 + 2 * 64 * 15104 + 64 * 15104
    assert expected == 4_997_120
    assert em.lora_params_per_layer(LLAMA_7B, 64) == expected
    assert em.lora_params(LLAMA_7B, 64) == 32 * expected == 159_907_840
    assert em.lora_params_per_layer(LLAMA_7B, 64, em.parse_lora_modules("q_proj,v_proj")) == 2 * 64 * 8192
    with pytest.raises(ValueError):
        em.parse_lora_modules("q_proj,wrong")


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
    for norms_in_fp32, dropout, attn in [(False, 0.1, "sdpa"), (False, 0.0, "eager"), (True, 0.0, "sdpa"),
                                         (True, 0.1, "eager")]:
        model = bench.load(str(tmp_path), norms_in_fp32, dropout, attn, 16)
        saved, layer_input, input_saved = bench.measure(model, 48)
        assert saved == em.layer_saved_bytes(shape, bench.BATCH, 48, attn, dropout, norms_in_fp32, lora_r=16)
        assert layer_input.numel() * layer_input.element_size() == (
            em.checkpoint_activation_bytes(shape, bench.BATCH, 48, True, norms_in_fp32) / shape.num_layers)
        assert input_saved == (em.saved_input_bytes(shape, bench.BATCH, 48, norms_in_fp32) > 0)


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
    components = em.estimate(em.LLAMA_CONFIGS["llama-65b"], norms_in_fp32=norms_in_fp32)
    base = components["quantized_base_weights"] + components["embeddings_and_lm_head"]
    assert 34.4e9 < base < 34.5e9  # the same floor for 65B: 34.5 GB
    assert em.summarize(components, 48, "paged_adamw_32bit")["fits"]
    report = em.summarize(components, 24, "paged_adamw_32bit")
    assert not report["fits"] and not report["fits_with_paging"]


def _cli_json(*args):
    result = run_python([SCRIPT, *args, "--json"])
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_cli_json_components_sum_to_total():
    report = _cli_json("--config", "llama-65b", "--gpu_memory_gb", "48")
    assert report["model"] == "llama-65b" and report["seq_len"] == 528 and report["norms_in_fp32"] is False
    assert report["total_mb"] == pytest.approx(sum(report["components_mb"].values()), abs=0.05)
    assert report["fits"] is True
    assert report["components_mb"]["quantized_base_weights"] == pytest.approx(
        em.quantized_base_bytes(em.LLAMA_CONFIGS["llama-65b"]) / MB, abs=0.05
    )
    small = _cli_json("--config", "llama-65b", "--gpu_memory_gb", "24")
    assert small["fits"] is False


def test_cli_flags_change_the_right_components():
    base = _cli_json("--config", "llama-7b")
    eight = _cli_json("--config", "llama-7b", "--optim", "paged_adamw_8bit", "--double_quant", "False")
    assert eight["components_mb"]["optimizer_states"] < base["components_mb"]["optimizer_states"] / 3
    assert eight["components_mb"]["quantized_base_weights"] > base["components_mb"]["quantized_base_weights"]
    longer = _cli_json("--config", "llama-7b", "--target_max_len", "2032", "--per_device_train_batch_size", "4")
    assert longer["components_mb"]["logits"] == pytest.approx(base["components_mb"]["logits"] * 4 * 2048 / 528, rel=1e-3)
    fp32 = _cli_json("--config", "llama-7b", "--norms_in_fp32")
    assert fp32["norms_in_fp32"] is True and _cli_json("--config", "llama-7b", "--norms_in_fp32", "False") == base
    assert fp32["components_mb"]["checkpointed_activations"] == pytest.approx(
        2 * base["components_mb"]["checkpointed_activations"], abs=0.1)
    assert fp32["components_mb"]["layer_activations"] > base["components_mb"]["layer_activations"]
    assert fp32["components_mb"]["optimizer_states"] == base["components_mb"]["optimizer_states"]
    no_gc = _cli_json("--config", "llama-7b", "--gradient_checkpointing", "False")
    assert no_gc["components_mb"]["checkpointed_activations"] == 0
    assert no_gc["components_mb"]["layer_activations"] > 10 * base["components_mb"]["layer_activations"]


def test_cli_table():
    result = run_python([SCRIPT, "--config", "llama-7b", "--gpu_memory_gb", "6"])
    assert "quantized_base_weights" in result.stdout and "cuda_context_overhead" in result.stdout
    assert "does NOT fit in 6 GB" in result.stdout
    assert "paged optimizer" in result.stdout  # 6.7 GB total, 5.5 GB without the optimizer states


def test_cli_model_name_or_path_reads_a_local_config(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(
        hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, vocab_size=1000,
    ).save_pretrained(tmp_path)
    shape = em.load_shape(str(tmp_path))
    assert shape == em.ModelShape(256, 704, 4, 8, 1000, num_kv_heads=2, head_dim=32, tie_word_embeddings=False)
    # grouped-query attention: k and v project to 2 heads * 32 = 64
    per_layer = 4 * (256 + 256) + 2 * 4 * (256 + 64) + 4 * (256 + 256) + 3 * 4 * (256 + 704)
    assert em.lora_params_per_layer(shape, 4) == per_layer
    report = _cli_json("--model_name_or_path", str(tmp_path), "--lora_r", "4")
    assert report["components_mb"]["lora_weights"] == pytest.approx(4 * per_layer * 2 / MB, abs=0.05)
    assert report["fits"] is True


def test_cli_rejects_bad_input(tmp_path):
    result = run_python([SCRIPT, "--model_name_or_path", str(tmp_path)], check=False)
    assert result.returncode == 2 and "error" in result.stderr
    result = run_python([SCRIPT, "--config", "llama-7b", "--lora_modules", "nope"], check=False)
    assert result.returncode == 2
