"""A step skipped for NaN gradients leaves the adapter and the optimizer state bit for bit as they were."""

import copy

import torch
from transformers import TrainerCallback

from test_resilience import train_with_nan_at


class SnapshotAfterEachStep(TrainerCallback):
    """Copies of the LoRA tensors and the optimizer state at the start and after every step."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.snapshots = []

    def take(self):
        model = self.trainer.model
        lora = {name: param.detach().clone() for name, param in model.named_parameters() if "lora_" in name}
        self.snapshots.append((lora, copy.deepcopy(self.trainer.optimizer.state_dict())))

    def on_train_begin(self, args, state, control, **kwargs):
        self.take()

    def on_step_end(self, args, state, control, **kwargs):
        self.take()


def identical(a, b):
    """Bit-identical nested state: tensors by torch.equal (same dtype and shape), the rest by ==."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


def test_a_skipped_nan_step_changes_no_lora_tensor_and_no_optimizer_state(tiny_model_dir, tmp_path):
    trainer, _ = train_with_nan_at(tiny_model_dir, str(tmp_path), {2}, "--max_steps", "3", "--save_steps", "10")
    recorder = SnapshotAfterEachStep(trainer)
    trainer.add_callback(recorder)
    trainer.train()

    (initial, _), (after_1, optimizer_1), (after_2, optimizer_2), (after_3, optimizer_3) = recorder.snapshots
    assert initial and optimizer_1["state"], "the first step must create optimizer state to compare"
    assert not identical(after_1, initial)  # a good step moves the adapter
    assert [name for name in after_1 if not torch.equal(after_2[name], after_1[name])] == []
    assert identical(optimizer_2, optimizer_1)
    assert not identical(after_3, after_2) and not identical(optimizer_3, optimizer_2)
    assert all(torch.isfinite(tensor).all() for tensor in after_3.values())
