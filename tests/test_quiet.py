"""Known harmless library messages stay out of a run's stderr; every other warning still shows."""

import logging
import os
import warnings

import pytest

from conftest import run_python
from qlorakit import SAMPLE_DATA_DIR, quiet

HARMLESS = ("is_gradient_checkpointing", "Paged optimizers are not supported", "pin_memory",
            "PAD/BOS/EOS", "gemm_4bit_forward")


def test_a_tiny_run_prints_none_of_the_known_harmless_messages(tiny_model_dir, tmp_path):
    result = run_python([
        "qlora.py", "--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path / "run"),
        "--dataset", os.path.join(SAMPLE_DATA_DIR, "alpaca_sample.json"), "--dataset_format", "alpaca",
        "--use_cpu", "--bf16", "True", "--optim", "paged_adamw_32bit", "--max_steps", "1",
        "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
        "--source_max_len", "16", "--target_max_len", "16", "--lora_r", "4",
    ])
    assert [message for message in HARMLESS if message in result.stderr] == []
    assert "--optim paged_adamw_32bit runs without paging on the CPU" in result.stdout


def warnings_shown(*raised):
    """The warnings that reach the user once the filters are installed: (message, category, module)."""
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        quiet.install()
        for message, category, module in raised:
            warnings.warn_explicit(message, category, module.replace(".", "/") + ".py", 1, module=module)
    return [str(warning.message) for warning in shown]


def test_only_the_listed_warning_is_silenced():
    listed = ("Paged optimizers are not supported on CPU. Falling back.", UserWarning, "bitsandbytes.optim.optimizer")
    other_message = ("Paged optimizer state is corrupt", UserWarning, "bitsandbytes.optim.optimizer")
    other_module = ("Paged optimizers are not supported on CPU. Falling back.", UserWarning, "mypackage.optim")
    other_category = ("Paged optimizers are not supported on CPU. Falling back.", RuntimeWarning,
                      "bitsandbytes.optim.optimizer")
    assert warnings_shown(listed) == []
    assert len(warnings_shown(other_message, other_module, other_category)) == 3


@pytest.mark.parametrize("known", quiet.KNOWN_LOG_RECORDS, ids=lambda known: known.logger)
def test_a_listed_logger_still_shows_its_other_warnings(known):
    logger = logging.getLogger(known.logger)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        quiet.install()
        logger.warning(known.message.replace("\\", "") + ": details")
        logger.warning("something went wrong with the weights")
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == ["something went wrong with the weights"]


def test_the_paged_optimizer_note_is_for_paged_optimizers_on_the_cpu_only():
    assert quiet.paged_optimizer_note("paged_adamw_8bit", "cpu").startswith("--optim paged_adamw_8bit runs without")
    assert quiet.paged_optimizer_note("paged_adamw_8bit", "cuda") is None
    assert quiet.paged_optimizer_note("adamw_torch", "cpu") is None
