"""The qlora.py recipe: set up tokenizer, data and model, then train, evaluate and predict."""

import dataclasses
import functools
import logging
import math
import os
import sys

import numpy as np
import torch
import transformers
from accelerate.utils import broadcast_object_list, gather_object
from transformers import ProgressCallback, TrainerState, set_seed

from . import checkpoints, jsonl, launcher, run_lock, run_settings
from .adapter_paths import check_adapter, resolve_adapter
from .base_loading import check_model_weights
from .base_model import SEQ2SEQ, hub_kwargs, load_model_config, model_task
from .best_model import best_evaluation
from .callbacks import CheckpointCallback, EarlyStopping, MMLUEvalCallback, NonFiniteGuardCallback, PreemptionCallback
from .collate import CausalLMCollator, Seq2SeqCollator
from .data import build_datasets
from .data_cache import rows_fingerprint
from .errors import ArgumentError, InputError, ModelError, TrainingInterrupted, TrainingStopped
from .generation import (build_generation_config, cut_at_stop_strings, decoding_settings, describe_stop_strings,
                         resolve_stop_strings, stop_strings_of)
from .layers import describe_parameters
from .lora import read_adapter_config
from .memory import peak_memory_mb
from .mmlu import load_mmlu
from .preview import length_summary, preview_rows
from .quiet import paged_optimizer_note
from .tokenizer import add_new_tokens, load_tokenizer, read_new_tokens
from .trainer import QLoRATrainer
from .training_model import load_model

logger = logging.getLogger(__name__)


def predict_generation_config(generation_args, tokenizer, template):
    """The GenerationConfig of --do_predict from the generation flags. Stop strings default to the
    turn markers of the chat template conversation rows are prompted with (template: None for other
    data: an oasst1 row's whole conversation is its answer)."""
    settings = decoding_settings(generation_args)
    stop_strings = resolve_stop_strings(generation_args.stop_strings, tokenizer, template)
    logger.info(describe_stop_strings(stop_strings, generation_args.stop_strings))
    return build_generation_config(settings, stop_strings)


def setup_logging(training_args):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    main_process = training_args.local_process_index == 0
    logging.getLogger("qlorakit").setLevel(logging.INFO if main_process else logging.WARNING)


def build_collator(pad_token_id, seq2seq, train_on_source=False, padding_free=False):
    """Encoder-decoder models get the source in the encoder and the target as labels; causal
    models one sequence, source then target (train_on_source, padding_free: --train_on_source and
    --padding_free, which apply to causal models only)."""
    if seq2seq:
        return Seq2SeqCollator(pad_token_id)
    return CausalLMCollator(pad_token_id, train_on_source=train_on_source, padding_free=padding_free)


def saved_adapter_dir(checkpoint_dir):
    """checkpoint-N/adapter_model of a checkpoint to continue from or evaluate, if it holds one."""
    if not checkpoint_dir:
        return None
    adapter_dir = os.path.join(checkpoint_dir, checkpoints.ADAPTER_DIR)
    return adapter_dir if os.path.isdir(adapter_dir) else None


def setup_trainer(args, resume_from=None, start_adapter=None, check_settings=None):
    """Everything before training, cheapest first so that bad input fails in seconds. Seeded
    first: the LoRA initialisation draws random numbers before the Trainer would seed.

    resume_from: a checkpoint whose adapter is loaded as it was saved (to resume, evaluate or
    predict) instead of a fresh one built from the LoRA flags.
    start_adapter: otherwise, an adapter directory or hub id to train on from (--adapter_name_or_path).
    check_settings: called with the training rows once they are built, before the model loads
    (check_run_settings).
    """
    model_args, data_args, training_args = args.model, args.data, args.training
    set_seed(training_args.seed)
    config = load_model_config(model_args.model_name_or_path, **hub_kwargs(model_args))
    task = model_task(config, model_args.model_name_or_path)
    check_model_weights(model_args.model_name_or_path)
    if task == SEQ2SEQ and (data_args.padding_free or data_args.train_on_source):
        raise ModelError("--padding_free and --train_on_source apply to causal models; the encoder reads the source")
    tokenizer, new_token_ids = load_run_tokenizer(args, config)
    hold_out_eval = training_args.do_eval or training_args.do_predict
    train_dataset, eval_dataset, template = build_datasets(data_args, tokenizer, model_args.cache_dir, hold_out_eval)
    if check_settings:
        check_settings(train_dataset)
    if template:  # checkpoints and output_dir save the tokenizer: it prompts as the data was written
        tokenizer.chat_template = template["template"]
    if task == SEQ2SEQ and "assistant_mask" in train_dataset.column_names:
        raise ModelError("chat data trains causal models (one sequence with every turn); "
                         f"{model_args.model_name_or_path} is an encoder-decoder: use an input-output format")
    mmlu_dataset = load_mmlu(args.mmlu, tokenizer) if args.mmlu.do_mmlu_eval else None

    adapter_starts_run = resume_from is None and start_adapter is not None
    adapter_dir = start_adapter if adapter_starts_run else saved_adapter_dir(resume_from)
    model = load_model(args, tokenizer, task, adapter_dir, template, adapter_starts_run, new_token_ids)
    if training_args.local_process_index == 0:
        print(f"world size: {training_args.world_size}")
        for line in describe_parameters(model):
            print(line)
        if note := paged_optimizer_note(training_args.optim.value, training_args.device.type):
            print(note)

    if training_args.generation_config is None:  # a --generation_config of the user's own wins
        prompted_by = template["template"] if template and "assistant_mask" in train_dataset.column_names else None
        training_args.generation_config = predict_generation_config(args.generation, tokenizer, prompted_by)
    keep_checkpoints = training_args.save_total_limit
    training_args.save_total_limit = None  # CheckpointCallback rotates, after the new one is complete
    trainer = QLoRATrainer(
        model=model,
        args=training_args,
        processing_class=tokenizer,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset,
        data_collator=build_collator(tokenizer.pad_token_id, task == SEQ2SEQ, train_on_source=data_args.train_on_source,
                                     padding_free=data_args.padding_free),
        callbacks=[CheckpointCallback(keep_checkpoints, tokenizer if new_token_ids else None),
                   NonFiniteGuardCallback(training_args.max_consecutive_nonfinite_steps),
                   PreemptionCallback()],
    )
    if mmlu_dataset is not None:
        mmlu_callback = MMLUEvalCallback(mmlu_dataset, tokenizer, args.mmlu.mmlu_split, seq2seq=task == SEQ2SEQ)
        mmlu_callback.trainer = trainer
        trainer.add_callback(mmlu_callback)
    if training_args.early_stopping_patience is not None:  # after MMLU: it reads the scores MMLU adds
        trainer.add_callback(EarlyStopping(training_args.early_stopping_patience,
                                           training_args.early_stopping_threshold))
    return trainer, tokenizer, eval_dataset


def find_callback(trainer, callback_type):
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, callback_type)), None)


def close_progress_bar(trainer):
    """Close the training progress bar before an error found mid-training (a metric never logged, a
    full disk) is reported: left open, it is redrawn at exit, below the error line."""
    progress = find_callback(trainer, ProgressCallback)
    if progress is not None and progress.training_bar is not None:
        progress.on_train_end(trainer.args, trainer.state, trainer.control)


def check_replicas(trainer):
    """Data parallel must leave the same adapter on every rank the launcher started; a mismatch
    means broken gradient sync, fewer checksums than ranks means ranks that trained alone."""
    trained = [p.detach().double() for p in trainer.model.parameters() if p.requires_grad]
    checksum = torch.stack([sum(t.sum() for t in trained), sum((t * t).sum() for t in trained)])
    checksums = gather_object([tuple(checksum.tolist())])
    if len(checksums) != launcher.world_size():
        raise TrainingStopped(f"{len(checksums)} of the launcher's {launcher.world_size()} ranks took part in "
                              "training: the ranks trained alone, not data parallel")
    if len(set(checksums)) != 1:
        raise TrainingStopped(f"trained weights differ between ranks (checksums {checksums}): gradient sync failed")
    logger.info("trained weights identical on all %d ranks (checksum %.10g)", len(checksums), checksums[0][0])


TOKEN_COLUMNS = ("source_ids", "target_ids", "length", "input_ids", "assistant_mask")


def decode_predictions(token_ids, tokenizer):
    token_ids = np.where(token_ids != -100, token_ids, tokenizer.pad_token_id)
    return tokenizer.batch_decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def prediction_fields(prompt, text, stop_strings):
    """predictions.jsonl's fields for a prompt and the text generated from it (the prompt first):
    the answer alone and with its prompt, the answer cut before its first stop string.

    >>> prediction_fields("Q: 2+2?", "Q: 2+2? 4### Human: and 3+3?", ["### Human:"])
    {'prediction_with_input': 'Q: 2+2? 4', 'prediction': '4'}
    """
    start = text.find(prompt)
    head, answer = (text[:start + len(prompt)], text[start + len(prompt):]) if start != -1 else ("", text)
    answer = cut_at_stop_strings(answer, stop_strings)
    return {"prediction_with_input": (head + answer).strip(), "prediction": answer.strip()}


def predict(trainer, tokenizer, dataset, output_dir):
    """Generate for every eval row and write predictions.jsonl in the reference's shape.

    A causal model's output continues its prompt; an encoder-decoder's holds the answer alone.
    Answers are cut before the first stop string of the generation config.
    """
    seq2seq = trainer.model.config.is_encoder_decoder
    trainer.data_collator = dataclasses.replace(trainer.data_collator, for_generation=True)
    with trainer.accelerator.autocast():  # generate() bypasses the autocast wrapped around forward()
        result = trainer.predict(test_dataset=dataset, metric_key_prefix="predict")
    texts = decode_predictions(result.predictions, tokenizer)
    stop_strings = stop_strings_of(trainer.model.generation_config)
    rows = []
    for example, text in zip(dataset, texts):
        row = {k: v for k, v in example.items() if k not in TOKEN_COLUMNS}
        row.update(prediction_fields(example["input"], example["input"] + text if seq2seq else text, stop_strings))
        rows.append(row)
    if trainer.is_world_process_zero():
        jsonl.write_jsonl_atomic(os.path.join(output_dir, "predictions.jsonl"), rows)
    return result.metrics


def release_process_group():
    """Tear torch.distributed down before exit; left to interpreter shutdown, a gloo rank can abort
    ("terminate called without an active exception") after a run that succeeded."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def load_run_tokenizer(args, config=None):
    """(the base's tokenizer with the run's --new_tokens added, their ids): the data is tokenized
    with them, so that each is one token."""
    tokenizer = load_tokenizer(args.model.model_name_or_path, config=config, **hub_kwargs(args.model))
    if not args.lora.new_tokens:
        return tokenizer, []
    new_token_ids = add_new_tokens(tokenizer, read_new_tokens(args.lora.new_tokens))
    logger.info("new tokens: %s", ", ".join(f"{token} (id {index})" for token, index in
                                          zip(tokenizer.convert_ids_to_tokens(new_token_ids), new_token_ids)))
    return tokenizer, new_token_ids


def preview_training_data(args):
    """--preview_data: the first training rows as tokenized, without loading the model."""
    model_args, data_args = args.model, args.data
    tokenizer, _ = load_run_tokenizer(args)
    train_dataset, _, _ = build_datasets(data_args, tokenizer, model_args.cache_dir)
    preview_rows(train_dataset, tokenizer, data_args.preview_data, data_args.train_on_source,
                 data_args.preview_format, colour=sys.stdout.isatty(), write=sys.stdout.write)
    total = data_args.max_seq_len or data_args.source_max_len + data_args.target_max_len
    summary = length_summary(train_dataset, {"source": data_args.source_max_len,
                                             "target": data_args.target_max_len, "total": total})
    (sys.stderr if data_args.preview_format == "json" else sys.stdout).write(summary)  # JSON lines stay rows only
    return {}


def lock_output_dir(training_args):
    """The first rank takes the output folder's lock for the whole run (its ranks share the
    folder); if it is refused, every rank learns so and refuses too, none waits on the others."""
    refusal, lock = None, None
    if training_args.process_index == 0:
        try:
            lock = run_lock.acquire(training_args.output_dir)
        except run_lock.RunLocked as locked:
            refusal = str(locked)
    if launcher.world_size() > 1:
        refusal = broadcast_object_list([refusal])[0]
    if refusal:
        raise run_lock.RunLocked(refusal)
    return lock


def check_run_settings(args, resume_from, completed, train_dataset=None):
    """What trains must be what the run in output_dir trained: its settings (run_settings) and its
    rows (data_cache.rows_fingerprint: a data file edited in between), saved when a run starts.

    A resume with other values is refused unless --resume_with_changed_args says the change is
    meant. A finished run trains nothing: asked to train with other values, it says so in a warning,
    so that its old adapter does not pass for one trained on them.
    """
    run_dir = os.path.dirname(os.path.abspath(resume_from)) if resume_from else args.training.output_dir
    current = run_settings.training_settings(args)
    if train_dataset is not None:  # not built for a finished run with nothing else to do
        current["train_data"] = rows_fingerprint(train_dataset)
    saved = run_settings.read_settings(run_dir) if resume_from else None
    changed = run_settings.changed_settings(saved or {}, current)
    if completed:
        if changed:
            logger.warning("%s holds a completed run trained with other settings (%s): nothing is trained, its "
                           "adapter is used as it was trained; pass another --output_dir to train with these",
                           run_dir, ", ".join(changed))
        return
    if changed and not args.training.resume_with_changed_args:
        raise ArgumentError(f"resuming {resume_from} with other settings than it was trained with "
                            f"({', '.join(changed)}): pass --resume_with_changed_args True to continue anyway, "
                            "or use another --output_dir")
    if changed:
        logger.warning("resuming %s with changed settings: %s (the optimizer and learning-rate schedule continue "
                       "from the checkpoint: a changed learning_rate does not take effect)", resume_from, ", ".join(changed))
    if args.training.process_index == 0:
        run_settings.save_settings(args.training.output_dir, current)


def planned_steps(training_args, train_rows):
    """--max_steps, or the steps --num_train_epochs makes when --max_steps is not positive."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    batches = math.ceil(train_rows / (training_args.per_device_train_batch_size * training_args.world_size))
    return math.ceil(training_args.num_train_epochs * batches / training_args.gradient_accumulation_steps)


def saved_weights_dir(output_dir, step, full_finetune):
    """Where checkpoint-{step} keeps what was trained: the adapter, or the whole model."""
    checkpoint_dir = os.path.join(output_dir, f"checkpoint-{step}")
    return checkpoint_dir if full_finetune else os.path.join(checkpoint_dir, checkpoints.ADAPTER_DIR)


def describe_plan(training_args, train_rows, full_finetune=False):
    """One line before training, so that a forgotten --max_steps (the default is the reference's
    10,000) shows before it costs hours: steps, rows per step, epochs of this dataset, and where
    the trained weights will be."""
    steps = planned_steps(training_args, train_rows)
    per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                * training_args.world_size)
    what = "model" if full_finetune else "adapter"
    if training_args.save_strategy == "no":
        where = "not saved (--save_strategy no)"
    elif training_args.load_best_model_at_end and not full_finetune:
        where = f"{checkpoints.final_adapter_dir(training_args.output_dir)} (the best checkpoint's)"
    else:
        where = saved_weights_dir(training_args.output_dir, steps, full_finetune)
    return (f"plan: {steps} steps x {per_step} rows ({training_args.per_device_train_batch_size} per device x "
            f"{training_args.gradient_accumulation_steps} accumulation x {training_args.world_size} processes) = "
            f"{steps * per_step} rows = {steps * per_step / train_rows:.1f} epochs of {train_rows} training rows; "
            f"{what} -> {where}")


def describe_final_weights(output_dir, full_finetune=False, best=None):
    """Where the trained weights are after training: with --load_best_model_at_end the best
    checkpoint's (best: its BestEvaluation, loaded at the end of training), else the newest checkpoint's."""
    what = "model" if full_finetune else "adapter"
    if best is not None and best.checkpoint is not None:
        where = best.checkpoint if full_finetune else checkpoints.final_adapter_dir(output_dir)
        return f"best checkpoint: {best} loaded as the final {what}: {where}"
    newest = next(iter(checkpoints.list_checkpoints(output_dir)), None)
    if newest is None:
        return f"no checkpoint in {output_dir} (--save_strategy no): the trained weights were not saved"
    return f"final {what}: {saved_weights_dir(output_dir, checkpoints.checkpoint_step(newest), full_finetune)}"


def describe_early_stop(stopper, state, metric_for_best_model):
    """The line that says training stopped early, at which step, why, and which evaluation was best."""
    margin = f" by more than {stopper.early_stopping_threshold:g}" if stopper.early_stopping_threshold else ""
    return (f"early stopping at step {stopper.stopped_at}: {metric_for_best_model} did not improve{margin} for "
            f"{stopper.early_stopping_patience} evaluations; best: {best_evaluation(state, metric_for_best_model)}")


def run(args):
    """Train, evaluate and predict as the flags (RunArguments) say, holding the output folder's
    lock; returns the metrics."""
    setup_logging(args.training)
    if args.data.preview_data:
        return preview_training_data(args)
    launcher.check_world_size(args.training.world_size)
    lock = lock_output_dir(args.training)
    try:
        return train_evaluate_predict(args)
    finally:
        if lock:
            run_lock.release(lock)


def completed_run_plan(training_args, checkpoint):
    """What a rerun of a finished run does instead of training, in words for the log."""
    tasks = [name for name, asked in (("evaluating", training_args.do_eval), ("predicting", training_args.do_predict))
             if asked]
    if tasks:
        return f"{' and '.join(tasks)} {checkpoint}"
    return "nothing else to do (add --do_eval or --do_predict to use it, or pick a new --output_dir to train anew)"


def starting_adapter(args, resume_from):
    """The adapter directory or hub id that --adapter_name_or_path names, or None. A checkpoint to
    resume wins: the adapter only starts a run, which one line says."""
    adapter = args.model.adapter_name_or_path
    if not adapter:
        return None
    if resume_from:
        logger.warning("--adapter_name_or_path %s is not loaded: %s continues this run (an adapter starts a new run "
                       "only; pass another --output_dir to start from it)", adapter, resume_from)
        return None
    adapter = resolve_adapter(adapter)
    check_adapter(adapter)
    read_adapter_config(adapter)  # a hub id that is not there fails before the base loads
    return adapter


def train_evaluate_predict(args):
    training_args = args.training
    if training_args.resume_from_checkpoint:
        resume_from, completed = checkpoints.check_explicit_checkpoint(training_args.resume_from_checkpoint), False
    else:
        resume_from, completed = checkpoints.find_resume_checkpoint(training_args.output_dir)
        if completed and not resume_from:
            logger.warning("%s holds a 'completed' marker but no checkpoint of a finished run: ignoring the marker, "
                           "training", training_args.output_dir)
            completed = False
    start_adapter = starting_adapter(args, resume_from)
    if completed and training_args.load_best_model_at_end:  # completed: resume_from is its newest checkpoint
        resume_from = checkpoints.best_checkpoint_of(resume_from) or resume_from
    if completed:
        logger.info("%s holds a completed run: skipping training; %s", training_args.output_dir,
                    completed_run_plan(training_args, resume_from))
    if completed and not (training_args.do_eval or training_args.do_predict):
        if training_args.do_train:
            check_run_settings(args, resume_from, completed)
        return {}  # nothing to load the model for
    check_settings = None
    if training_args.do_train:
        check_settings = functools.partial(check_run_settings, args, resume_from, completed)
    trainer, tokenizer, eval_dataset = setup_trainer(args, resume_from, start_adapter, check_settings)
    if completed:
        # Its metrics are those of the checkpoint evaluated (epoch, step), not of a fresh state at 0.
        trainer.state = TrainerState.load_from_json(os.path.join(resume_from, checkpoints.TRAINER_STATE_FILE))

    all_metrics = {"run_name": training_args.run_name}
    if training_args.do_train and not completed:
        if resume_from:
            logger.info("resuming from %s", resume_from)
        elif start_adapter:
            logger.info("starting from the weights of %s at step 0, with a fresh optimizer and learning-rate schedule",
                        start_adapter)
        if trainer.is_world_process_zero():
            print(describe_plan(training_args, len(trainer.train_dataset), args.lora.full_finetune))
        try:
            result = trainer.train(resume_from_checkpoint=resume_from)
        except InputError:
            close_progress_bar(trainer)
            raise
        preemption = find_callback(trainer, PreemptionCallback)
        if preemption.stopped_at is not None:
            stopped = TrainingInterrupted if preemption.signal_name == "SIGINT" else TrainingStopped
            raise stopped(f"stopped by {preemption.signal_name} at step {preemption.stopped_at}; checkpoint-"
                          f"{preemption.stopped_at} saved: run the same command to resume")
        guard = find_callback(trainer, NonFiniteGuardCallback)
        if guard.gave_up:
            raise TrainingStopped(
                f"stopped at step {trainer.state.global_step}: {guard.in_a_row} steps in a row had NaN/inf "
                f"gradients (updates skipped, weights unchanged, saved as checkpoint-{trainer.state.global_step}); "
                "try --bf16 instead of --fp16 or a lower --learning_rate")
        if launcher.world_size() > 1:
            check_replicas(trainer)
        result.metrics["train_peak_memory_mb"] = peak_memory_mb(training_args.device)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(training_args.output_dir)
            metric = training_args.metric_for_best_model
            best = best_evaluation(trainer.state, metric) if training_args.load_best_model_at_end else None
            print(describe_final_weights(training_args.output_dir, args.lora.full_finetune, best))
            stopper = find_callback(trainer, EarlyStopping)
            if stopper is not None and stopper.stopped_at is not None:
                print(describe_early_stop(stopper, trainer.state, metric))
        all_metrics.update(result.metrics)
    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        all_metrics.update(metrics)
    if training_args.do_predict:
        metrics = predict(trainer, tokenizer, eval_dataset, training_args.output_dir)
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
        all_metrics.update(metrics)
    if trainer.is_world_process_zero() and (training_args.do_train or training_args.do_eval or training_args.do_predict):
        trained = training_args.do_train and not completed
        save_run_metrics(training_args.output_dir, all_metrics, keep_saved=not trained)
    return all_metrics


def save_run_metrics(output_dir, metrics, keep_saved):
    """Write output_dir/metrics.json. keep_saved: this invocation trained nothing (a finished run
    evaluated or predicted again), so the metrics saved by the run that trained stay beside the
    new ones instead of being replaced by them."""
    path = os.path.join(output_dir, "metrics.json")
    saved = {}
    if keep_saved and os.path.isfile(path):
        try:
            saved = jsonl.read_json_object(path)
        except InputError as error:
            logger.warning("replacing %s, which cannot be read: %s", path, error)
    jsonl.write_json_atomic(path, {**saved, **metrics})
