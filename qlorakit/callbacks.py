"""Trainer callbacks: checkpoint finishing and MMLU evaluation."""

import os

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from . import checkpoints
from .mmlu import accuracy_by_subject, answer_positions, choice_token_ids


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
        if state.is_world_process_zero:
            checkpoints.mark_run_completed(args.output_dir)


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
