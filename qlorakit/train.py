"""The qlora.py recipe: set up tokenizer, data and model, then train, evaluate and predict."""

import logging
import os
import resource
import sys

import numpy as np
import torch
import transformers
from accelerate.utils import gather_object
from transformers import GenerationConfig, set_seed

from . import checkpoints, jsonl
from .callbacks import CheckpointCallback, MMLUEvalCallback, NonFiniteGuardCallback, PreemptionCallback
from .collate import CausalLMCollator, Seq2SeqCollator
from .data import build_datasets
from .errors import TrainingStopped
from .mmlu import load_mmlu
from .model import (SEQ2SEQ, ModelError, describe_parameters, hub_kwargs, load_model, load_model_config, load_tokenizer,
                    model_task)
from .preview import preview_rows
from .trainer import QLoRATrainer

logger = logging.getLogger(__name__)


def build_generation_config(generation_args):
    return GenerationConfig(**{k: v for k, v in vars(generation_args).items() if v is not None})


def setup_logging(training_args):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    main_process = training_args.local_process_index == 0
    logging.getLogger("qlorakit").setLevel(logging.INFO if main_process else logging.WARNING)


def build_collator(tokenizer, data_args, seq2seq, for_generation=False):
    """Encoder-decoder models get the source in the encoder and the target as labels; causal
    models one sequence, source then target."""
    if seq2seq:
        return Seq2SeqCollator(tokenizer.pad_token_id, for_generation=for_generation)
    return CausalLMCollator(tokenizer.pad_token_id, train_on_source=data_args.train_on_source,
                            for_generation=for_generation, padding_free=data_args.padding_free)


def saved_adapter_dir(checkpoint_dir):
    """checkpoint-N/adapter_model of a checkpoint to continue from or evaluate, if it holds one."""
    if not checkpoint_dir:
        return None
    adapter_dir = os.path.join(checkpoint_dir, checkpoints.ADAPTER_DIR)
    return adapter_dir if os.path.isdir(adapter_dir) else None


def setup_trainer(args, resume_from=None):
    """Everything before training, cheapest first so that bad input fails in seconds. Seeded
    first: the LoRA initialisation draws random numbers before the Trainer would seed.

    resume_from: a checkpoint whose adapter is loaded as it was saved (to resume, evaluate or
    predict) instead of a fresh one built from the LoRA flags.
    """
    model_args, data_args, training_args = args.model, args.data, args.training
    set_seed(training_args.seed)
    hub = hub_kwargs(model_args)
    config = load_model_config(model_args.model_name_or_path, **hub)
    task = model_task(config, model_args.model_name_or_path)
    if task == SEQ2SEQ and (data_args.padding_free or data_args.train_on_source):
        raise ModelError("--padding_free and --train_on_source apply to causal models; the encoder reads the source")
    tokenizer = load_tokenizer(model_args.model_name_or_path, config=config, **hub)
    train_dataset, eval_dataset = build_datasets(data_args, tokenizer, model_args.cache_dir,
                                                 hold_out_eval=training_args.do_eval or training_args.do_predict)
    if task == SEQ2SEQ and "assistant_mask" in train_dataset.column_names:
        raise ModelError("chat data trains causal models (one sequence with every turn); "
                         f"{model_args.model_name_or_path} is an encoder-decoder: use an input-output format")
    mmlu_dataset = load_mmlu(args.mmlu, tokenizer) if args.mmlu.do_mmlu_eval else None

    model = load_model(args, tokenizer, task, saved_adapter_dir(resume_from))
    if training_args.local_process_index == 0:
        print(f"world size: {training_args.world_size}")
        for line in describe_parameters(model):
            print(line)

    if training_args.generation_config is None:  # a --generation_config of the user's own wins
        training_args.generation_config = build_generation_config(args.generation)
    keep_checkpoints = training_args.save_total_limit
    training_args.save_total_limit = None  # CheckpointCallback rotates, after the new one is complete
    trainer = QLoRATrainer(
        model=model,
        args=training_args,
        processing_class=tokenizer,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset,
        data_collator=build_collator(tokenizer, data_args, task == SEQ2SEQ),
        callbacks=[CheckpointCallback(keep_checkpoints),
                   NonFiniteGuardCallback(training_args.max_consecutive_nonfinite_steps),
                   PreemptionCallback()],
    )
    if mmlu_dataset is not None:
        mmlu_callback = MMLUEvalCallback(mmlu_dataset, tokenizer, args.mmlu.mmlu_split, seq2seq=task == SEQ2SEQ)
        mmlu_callback.trainer = trainer
        trainer.add_callback(mmlu_callback)
    return trainer, tokenizer, eval_dataset


def find_callback(trainer, callback_type):
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, callback_type))


def check_replicas(trainer):
    """Data parallel must leave the same adapter on every rank; a mismatch means broken gradient sync."""
    trained = [p.detach().double() for p in trainer.model.parameters() if p.requires_grad]
    checksum = torch.stack([sum(t.sum() for t in trained), sum((t * t).sum() for t in trained)])
    checksums = gather_object([tuple(checksum.tolist())])
    if len(set(checksums)) != 1:
        raise TrainingStopped(f"trained weights differ between ranks (checksums {checksums}): gradient sync failed")
    logger.info("trained weights identical on all %d ranks (checksum %.10g)", len(checksums), checksums[0][0])


TOKEN_COLUMNS = ("source_ids", "target_ids", "length", "input_ids", "assistant_mask")


def decode_predictions(token_ids, tokenizer):
    token_ids = np.where(token_ids != -100, token_ids, tokenizer.pad_token_id)
    return tokenizer.batch_decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def predict(trainer, tokenizer, dataset, data_args, output_dir):
    """Generate for every eval row and write predictions.jsonl in the reference's shape.

    A causal model's output continues its prompt; an encoder-decoder's holds the answer alone.
    """
    seq2seq = trainer.model.config.is_encoder_decoder
    trainer.data_collator = build_collator(tokenizer, data_args, seq2seq, for_generation=True)
    with trainer.accelerator.autocast():  # generate() bypasses the autocast wrapped around forward()
        result = trainer.predict(test_dataset=dataset, metric_key_prefix="predict")
    texts = decode_predictions(result.predictions, tokenizer)
    rows = []
    for example, text in zip(dataset, texts):
        text = example["input"] + text if seq2seq else text
        row = {k: v for k, v in example.items() if k not in TOKEN_COLUMNS}
        row["prediction_with_input"] = text.strip()
        row["prediction"] = text.replace(example["input"], "", 1).strip()
        rows.append(row)
    if trainer.is_world_process_zero():
        jsonl.write_jsonl_atomic(os.path.join(output_dir, "predictions.jsonl"), rows)
    return result.metrics


def peak_memory_mb(training_args):
    """This process's peak so far: CUDA max allocated on a GPU (what scripts/estimate_memory.py
    predicts), the maximum resident set size on CPU (Linux reports it in KiB)."""
    if training_args.device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(training_args.device) / 2**20)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def release_process_group():
    """Tear torch.distributed down before exit; left to interpreter shutdown, a gloo rank can abort
    ("terminate called without an active exception") after a run that succeeded."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def preview_training_data(model_args, data_args):
    """--preview_data: the first training rows as tokenized, without loading the model."""
    tokenizer = load_tokenizer(model_args.model_name_or_path, **hub_kwargs(model_args))
    train_dataset, _ = build_datasets(data_args, tokenizer, model_args.cache_dir)
    preview_rows(train_dataset, tokenizer, data_args.preview_data, data_args.train_on_source,
                 data_args.preview_format, colour=sys.stdout.isatty(), write=sys.stdout.write)
    return {}


def run(args):
    """Train, evaluate and predict as the flags (RunArguments) say; returns the metrics."""
    training_args = args.training
    setup_logging(training_args)
    if args.data.preview_data:
        return preview_training_data(args.model, args.data)
    if training_args.resume_from_checkpoint:
        resume_from, completed = checkpoints.check_explicit_checkpoint(training_args.resume_from_checkpoint), False
    else:
        resume_from, completed = checkpoints.find_resume_checkpoint(training_args.output_dir)
    trainer, tokenizer, eval_dataset = setup_trainer(args, resume_from)
    if completed and resume_from:
        logger.info("%s holds a completed run: skipping training, evaluating %s", training_args.output_dir, resume_from)

    all_metrics = {"run_name": training_args.run_name}
    if training_args.do_train and not completed:
        if resume_from:
            logger.info("resuming from %s", resume_from)
        result = trainer.train(resume_from_checkpoint=resume_from)
        preemption = find_callback(trainer, PreemptionCallback)
        if preemption.stopped_at is not None:
            raise TrainingStopped(f"stopped by SIGTERM at step {preemption.stopped_at}; checkpoint-"
                                  f"{preemption.stopped_at} saved: run the same command to resume")
        guard = find_callback(trainer, NonFiniteGuardCallback)
        if guard.gave_up:
            raise TrainingStopped(
                f"stopped at step {trainer.state.global_step}: {guard.in_a_row} steps in a row had NaN/inf "
                f"gradients (updates skipped, weights unchanged, saved as checkpoint-{trainer.state.global_step}); "
                "try --bf16 instead of --fp16 or a lower --learning_rate")
        if training_args.world_size > 1:
            check_replicas(trainer)
        result.metrics["train_peak_memory_mb"] = peak_memory_mb(training_args)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(training_args.output_dir)
        all_metrics.update(result.metrics)
    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        all_metrics.update(metrics)
    if training_args.do_predict:
        metrics = predict(trainer, tokenizer, eval_dataset, args.data, training_args.output_dir)
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
        all_metrics.update(metrics)
    if trainer.is_world_process_zero() and (training_args.do_train or training_args.do_eval or training_args.do_predict):
        jsonl.write_json_atomic(os.path.join(training_args.output_dir, "metrics.json"), all_metrics)
    return all_metrics
