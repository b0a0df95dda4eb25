"""Every supported architecture trains in 4-bit, predicts and merges (tiny random models, 2 steps)."""

import os

import pytest

from conftest import REPO_ROOT
from qlorakit.cli import architecture_matrix as MATRIX
from qlorakit.cli.make_tiny_model import ARCHITECTURES as TINY_ARCHITECTURES

ARCHITECTURES = list(TINY_ARCHITECTURES)
# transformers keeps T5's four `wo` projections in fp32 on purpose; every other layer but the head is 4-bit.
KEPT_IN_16_BIT = {"t5": 5}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_trains_in_4bit_predicts_and_merges(arch, tmp_path):
    row = MATRIX.check_architecture(arch, str(tmp_path))
    assert row["train_exit_code"] == 0
    assert row["predictions"] == 2
    assert row["all_linear_targets"], row["targets"]
    assert row["linear_layers"] - row["quantized"] == KEPT_IN_16_BIT.get(arch, 1)
    assert row["adapter_effect"] > 1e-2, "the adapter must move the logits, else the merge check proves nothing"
    assert row["merge_gap"] < MATRIX.MERGE_TOLERANCE


def test_the_document_lists_every_architecture():
    with open(os.path.join(REPO_ROOT, "docs", "ARCHITECTURES.md"), encoding="utf-8") as handle:
        rows = [line.split("|")[1].strip() for line in handle if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ARCHITECTURES
