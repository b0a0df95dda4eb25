"""Trainer callbacks: checkpoint finishing, non-finite gradient guard, preemption, MMLU evaluation
and early stopping."""

import logging
import os
import signal
import sys

import torch
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm
from transformers import EarlyStoppingCallback, TrainerCallback

from . import checkpoints
from .best_model import with_prefixed_name
from .collate import CausalLMCollator, Seq2SeqCollator
from .mmlu import accuracy_by_subject, answer_positions, choice_token_ids

logger = logging.getLogger(__name__)


class CheckpointCallback(TrainerCallback):
    """Finishes each checkpoint (reference layout + completion marker), then rotates old ones,
    never the best (state.best_model_checkpoint).

    Rotation lives here instead of in the Trainer so that nothing is deleted before the new
    checkpoint is complete.
    keep: --save_total_limit. adapter_tokenizer: the tokenizer to save into each checkpoint's
    adapter_model/ as well, for an adapter that trains the rows of added tokens (only that
    tokenizer knows their ids; the Trainer saves it beside the adapter folder, not in it).
    """

    def __init__(self, keep, adapter_tokenizer=None):
        self.keep = keep
        self.adapter_tokenizer = adapter_tokenizer

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and checkpoints.remove_final_adapter(args.output_dir):
            logger.info("removed %s, the final adapter from when training last ended in this folder",
                        checkpoints.final_adapter_dir(args.output_dir))

    def on_save(self, args, state, control, **kwargs):
        if args.world_size > 1:
            torch.distributed.barrier()  # every rank's RNG state is on disk before rank 0 lists the files
        if state.is_world_process_zero:
            checkpoint_dir = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            with checkpoints.save_errors_reported(checkpoint_dir):
                checkpoints.finalize_checkpoint(checkpoint_dir, self.adapter_tokenizer)
            checkpoints.rotate_checkpoints(args.output_dir, self.keep, state.best_model_checkpoint)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and 0 < state.max_steps <= state.global_step:  # 0 steps: nothing completed
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


class PreemptionCallback(TrainerCallback):
    """On SIGTERM (how clusters and spot instances preempt) or a first Ctrl-C (SIGINT),
    checkpoint at the end of the current step and stop, instead of losing everything since the
    last scheduled checkpoint.

    A second Ctrl-C aborts at once (KeyboardInterrupt): a checkpoint it tears lacks its
    completion marker, so a resume skips it and goes back to the one before.

    Under data parallel the ranks agree through an all-reduce each step, so that they all save
    at the same step even if the signal reaches them at different times.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self.stopped_at = None
        self.previous_handlers = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.previous_handlers = {signum: signal.signal(signum, self.request_stop) for signum in self.SIGNALS}

    def request_stop(self, signum, frame):
        self.requested = True
        self.signal_name = self.signal_name or signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print("\nCtrl-C: finishing the current step, then saving a checkpoint and stopping "
                  "(Ctrl-C again aborts at once, without it)", file=sys.stderr, flush=True)

    def anyone_requested(self, args):
        if args.world_size == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_at is None and self.anyone_requested(args):
            self.stopped_at = state.global_step
            self.signal_name = self.signal_name or "a signal on another rank"
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)


class MMLUEvalCallback(TrainerCallback):
    """Scores MMLU at every evaluation and logs accuracy per subject and mmlu_loss.

    Under data parallel each rank scores every world_size-th question and the results are
    gathered, so the numbers equal a single-process run's.
    """

    def __init__(self, mmlu_dataset, tokenizer, split, seq2seq=False):
        self.dataset = mmlu_dataset
        # padded: one row per question
        self.collator = (Seq2SeqCollator if seq2seq else CausalLMCollator)(tokenizer.pad_token_id)
        # A causal model predicts label t at position t - 1; a decoder's logits line up with its labels.
        self.shift = 0 if seq2seq else 1
        self.choice_ids = choice_token_ids(tokenizer)
        self.split = split
        self.trainer = None
        self.scored = None  # (global step, scores) of the last scoring

    def score_shard(self, model, rank, world):
        """(question index, predicted choice, true choice) for this rank's questions, and batch losses."""
        trainer = self.trainer
        indices = list(range(rank, len(self.dataset), world))
        loader = DataLoader(Subset(self.dataset, indices), batch_size=trainer.args.per_device_eval_batch_size,
                            collate_fn=self.collator)
        choice_ids = torch.tensor(self.choice_ids)
        scored, losses, position = [], [], 0
        for batch in tqdm(loader, desc="MMLU", disable=rank != 0):
            batch = trainer._prepare_inputs(batch)
            outputs = model(**batch)
            losses.append(outputs.loss.item())
            labels = batch["labels"]
            rows = torch.arange(labels.shape[0], device=labels.device)
            positions = answer_positions(labels, self.shift)
            predicted = outputs.logits[rows, positions][:, choice_ids.to(labels.device)].argmax(dim=-1)
            answers = labels[rows, positions + self.shift].tolist()
            for offset, (guess, answer) in enumerate(zip(predicted.tolist(), answers)):
                truth = self.choice_ids.index(answer) if answer in self.choice_ids else -1
                scored.append((indices[position + offset], guess, truth))
            position += len(answers)
        return scored, losses

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        """Log the MMLU scores and add them to the evaluation's metrics, which the Trainer returns
        and qlora.py saves (eval_results.json, all_results.json, metrics.json). An evaluation of
        weights already scored (the final one, right after the last step's) reuses the scores."""
        if self.scored is None or self.scored[0] != state.global_step:
            self.scored = (state.global_step, self.score(args, model))
            self.trainer.log(self.scored[1])
        if metrics is not None:
            metrics.update(self.scored[1])

    @torch.no_grad()
    def score(self, args, model):
        was_training = model.training
        model.eval()
        scored, losses = self.score_shard(model, args.process_index, args.world_size)
        if args.world_size > 1:
            scored, losses = gather_object(scored), gather_object(losses)
        scored.sort()
        subjects = self.dataset["subject"]
        results = accuracy_by_subject([subjects[i] for i, _, _ in scored], [p for _, p, _ in scored],
                                      [r for _, _, r in scored], self.split)
        results["mmlu_loss"] = sum(losses) / max(len(losses), 1)
        if was_training:
            model.train()
        return results


class EarlyStopping(EarlyStoppingCallback):
    """transformers' early stopping (--early_stopping_patience, --early_stopping_threshold), which
    also finds the MMLU scores by name, saves the step it stops at, keeps its count of evaluations
    without improvement across a resume, and marks an early-stopped run completed: rerunning the
    command must not train on."""

    def __init__(self, early_stopping_patience=1, early_stopping_threshold=0.0):
        super().__init__(early_stopping_patience, early_stopping_threshold)
        self.stopped_at = None

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        # The resumed state holds the count as saved; a checkpoint saved without this callback holds
        # none, and the Trainer needs an entry to save the count into.
        saved = state.stateful_callbacks.setdefault(type(self).__name__, self.state())
        self.early_stopping_patience_counter = saved["attributes"]["early_stopping_patience_counter"]

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        metrics = with_prefixed_name(metrics, args.metric_for_best_model)
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if self.stopped_at is None and self.early_stopping_patience_counter >= self.early_stopping_patience:
            self.stopped_at = state.global_step
            control.should_save = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None and state.is_world_process_zero:
            checkpoints.mark_run_completed(args.output_dir)
