"""The Trainer qlora.py runs: Seq2SeqTrainer plus the reference's adapter checkpoint layout."""

import os

import torch
from torch.utils.data import SequentialSampler
from transformers import Seq2SeqTrainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from . import checkpoints
from .best_model import with_prefixed_name
from .checkpoints import ADAPTER_DIR
from .errors import CheckpointError


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from (seed, epoch) alone. The stock sampler draws from the global
    RNG, whose state at the start of a later epoch a resumed run cannot recreate (dropout and the
    earlier epochs used it), so resuming in the second epoch or later trained other rows. The
    Trainer calls set_epoch before each epoch, also on resume, and on every data-parallel rank."""

    def __init__(self, batch_size, lengths, seed):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class QLoRATrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer that resumes an adapter from the reference layout (checkpoint-N/adapter_model),
    loads the best one from there (--load_best_model_at_end) and evaluates in dataset order."""

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        """Rows in dataset order, also under group_by_length: predictions.jsonl pairs each generation
        with its row by position, and transformers 5 groups evaluation batches by length too."""
        if self.args.world_size > 1:
            return None  # accelerate shards the dataset in order and gathers it back in order
        return SequentialSampler(eval_dataset)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """Give generate the tokenizer too: stop strings in the generation config need it."""
        gen_kwargs = gen_kwargs or dict(getattr(self, "_gen_kwargs", {}))
        gen_kwargs.setdefault("tokenizer", self.processing_class)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)

    def _save_checkpoint(self, model, trial):
        """Withdraw the marker of a checkpoint being saved again (a resume from an earlier one)
        before any file changes, and report a failed write in one line."""
        checkpoint_dir = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
        with checkpoints.save_errors_reported(checkpoint_dir):
            if self.args.should_save:
                checkpoints.unmark_checkpoint(checkpoint_dir)
            super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        if not load_saved_adapter(model, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _determine_best_metric(self, metrics, trial):
        """Find --metric_for_best_model also under the MMLU scores' own names, and name a metric the
        evaluation never logs in one line (transformers raises a KeyError)."""
        if self.args.metric_for_best_model is not None:
            metrics = with_prefixed_name(metrics, self.args.metric_for_best_model)
        return super()._determine_best_metric(metrics, trial)

    def _load_best_model(self):
        """Load the best checkpoint's adapter from checkpoint-N/adapter_model and save it as the
        run's final adapter (output_dir/adapter_model). The stock method looks for the adapter in
        checkpoint-N/ itself and, not finding it, keeps the last step's weights."""
        best = self.state.best_model_checkpoint
        if not os.path.isdir(os.path.join(best, ADAPTER_DIR)):
            super()._load_best_model()  # a full finetune: the model's own files in checkpoint-N/
            return
        problems = checkpoints.verify_checkpoint(best, adapter_only=True)
        if problems:
            raise CheckpointError(f"the best checkpoint {best} cannot be trusted ({'; '.join(problems)})")
        load_saved_adapter(self.model, best)
        if self.args.should_save:
            checkpoints.save_final_adapter(self.args.output_dir, self.model.save_pretrained)


def load_saved_adapter(model, checkpoint_dir):
    """Load checkpoint_dir/adapter_model into the model's trained adapter (True), if there is one
    and the model is a peft model. The stock Trainer would load that folder as a second, frozen
    adapter named 'adapter_model' and leave the trained one as it was."""
    adapter_dir = os.path.join(checkpoint_dir, ADAPTER_DIR)
    if not (os.path.isdir(adapter_dir) and hasattr(model, "load_adapter")):
        return False
    # Keep the adapter in the dtype it trains in (peft would upcast bf16 weights to fp32).
    model.load_adapter(adapter_dir, model.active_adapter, is_trainable=True, autocast_adapter_dtype=False)
    return True
