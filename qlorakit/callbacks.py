"""Trainer callbacks: checkpoint finishing, non-finite gradient guard and MMLU evaluation."""

import logging
import os

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from . import checkpoints
from .mmlu import accuracy_by_subject, answer_positions, choice_token_ids

logger = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """Training gave up (too many non-finite steps); qlora.py prints it as one line and exits with 1."""


class CheckpointCallback(TrainerCallback):
    """Finishes each checkpoint (reference layout + completion marker), then rotates old ones.

    Rotation lives here instead of in the Trainer so that nothing is deleted before the new
    checkpoint is complete.
    """

    def __init__(self, keep):
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint_dir = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            checkpoints.finalize_checkpoint(checkpoint_dir)
            checkpoints.rotate_checkpoints(args.output_dir, self.keep)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step >= state.max_steps:
            checkpoints.mark_run_completed(args.output_dir)


class NonFiniteGuardCallback(TrainerCallback):
    """Skips updates whose gradients hold NaN or inf, and stops after `limit` of them in a row.

    fp16 compute on a 4-bit base can overflow; one bad batch should not poison the adapter and
    the optimizer moments. A skipped step leaves weights and optimizer state untouched (its
    gradients are dropped, and AdamW skips parameters without one); the step still counts.
    """

    def __init__(self, limit):
        self.limit = limit
        self.in_a_row = 0
        self.skipped = 0

    @property
    def gave_up(self):
        return self.in_a_row >= self.limit

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads or torch.stack([torch.isfinite(g).all() for g in grads]).all():
            self.in_a_row = 0
            return
        for param in model.parameters():
            param.grad = None
        self.in_a_row += 1
        self.skipped += 1
        logger.warning("step %d: non-finite loss or gradients, update skipped (%d in a row, %d in all)",
                       state.global_step + 1, self.in_a_row, self.skipped)

    def on_step_end(self, args, state, control, **kwargs):
        if self.gave_up:
            control.should_training_stop = True
            control.should_save = True


class MMLUEvalCallback(TrainerCallback):
    """Scores MMLU at every evaluation and logs accuracy per subject and mmlu_loss."""

    def __init__(self, mmlu_dataset, tokenizer, split):
        self.dataset = mmlu_dataset
        self.choice_ids = torch.tensor(choice_token_ids(tokenizer))
        self.split = split
        self.trainer = None

    @torch.no_grad()
    def on_evaluate(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        loader = trainer.get_eval_dataloader(self.dataset)
        was_training = model.training
        model.eval()
        predictions, references, losses = [], [], []
        for batch in tqdm(loader, desc="MMLU", disable=not state.is_world_process_zero):
            batch = trainer._prepare_inputs(batch)
            outputs = model(**batch)
            losses.append(outputs.loss.item())
            rows = torch.arange(batch["labels"].shape[0], device=batch["labels"].device)
            positions = answer_positions(batch["labels"])
            choice_ids = self.choice_ids.to(outputs.logits.device)
            choice_logits = outputs.logits[rows, positions][:, choice_ids]
            predictions += choice_logits.argmax(dim=-1).tolist()
            answer_tokens = batch["labels"][rows, positions + 1]
            references += [self.choice_ids.tolist().index(token) if token in self.choice_ids else -1
                           for token in answer_tokens.tolist()]
        results = accuracy_by_subject(self.dataset["subject"][: len(predictions)], predictions, references, self.split)
        results["mmlu_loss"] = sum(losses) / max(len(losses), 1)
        trainer.log(results)
        if was_training:
            model.train()
