"""The settings that decide what a run trains, saved beside its checkpoints, so that a resume with
other values (a new learning rate, batch size, dataset, model, LoRA shape or seed) is noticed
instead of silently mixing two runs in one adapter. train.check_run_settings adds the fingerprint
of the rows themselves (train_data), which a path cannot vouch for."""

import json
import os

from . import jsonl
from .base_loading import trained_settings

SETTINGS_FILE = "run_settings.json"

# (argument group, field): what changes the trained weights if it changes mid-run.
TRAINING_SETTINGS = (
    ("model", "model_name_or_path"),
    *(("quantization", name) for name in trained_settings()),
    ("lora", "lora_r"), ("lora", "lora_alpha"), ("lora", "lora_dropout"), ("lora", "lora_modules"),
    ("lora", "full_finetune"), ("lora", "new_tokens"), ("lora", "new_tokens_in_head"),
    ("data", "dataset"), ("data", "dataset_format"), ("data", "max_train_samples"),
    ("data", "source_max_len"), ("data", "target_max_len"), ("data", "train_on_source"),
    ("training", "learning_rate"), ("training", "lr_scheduler_type"), ("training", "warmup_steps"),
    ("training", "weight_decay"), ("training", "max_grad_norm"),
    ("training", "per_device_train_batch_size"), ("training", "gradient_accumulation_steps"),
    ("training", "world_size"), ("training", "optim"), ("training", "seed"), ("training", "data_seed"),
    ("training", "train_sampling_strategy"),
)


def training_settings(args):
    """The TRAINING_SETTINGS of parsed RunArguments as plain JSON values (enums as their strings)."""
    return json.loads(json.dumps({name: getattr(getattr(args, group), name) for group, name in TRAINING_SETTINGS}))


def changed_settings(saved, current):
    """Names whose value differs, with both values, e.g. 'learning_rate 0.0002 -> 0.002'."""
    return [f"{name} {saved[name]} -> {current[name]}" for name in current
            if name in saved and saved[name] != current[name]]


def read_settings(run_dir):
    path = os.path.join(run_dir, SETTINGS_FILE)
    if not os.path.isfile(path):
        return None  # a run from before this file existed: nothing to compare
    return jsonl.read_json_object(path)


def save_settings(run_dir, settings):
    jsonl.write_json_atomic(os.path.join(run_dir, SETTINGS_FILE), settings)
