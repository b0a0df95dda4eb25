"""Command-line arguments of qlora.py, with the QLoRA reference's names and defaults.

One dataclass per concern (model, quantization, LoRA, data, MMLU evaluation, training,
generation), parsed by HfArgumentParser from flags or from one .yaml/.json config file; `--help`
lists them in those groups. The reference's flags that transformers 5 renamed or dropped keep
their names and defaults in ``ReferenceFlags`` and are translated in one place,
``translate_reference_flags``. Parsing is strict: a misspelt flag is an error (the reference
silently ignored unknown flags), and a value the user set is never replaced.
"""

import argparse
import dataclasses
import difflib
import importlib.util
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

import transformers
import yaml
from transformers import HfArgumentParser

from .base_loading import setting_choices, trained_settings
from .chat_data import chat_template_help
from .data import dataset_format_help, dataset_help
from .errors import ArgumentError
from .generation import control_problem
from .tokenizer import read_new_tokens

logger = logging.getLogger(__name__)

ADAPTER_MODULES_ALL = "all"
PREVIEW_FORMATS = ("text", "json")


@dataclass
class ModelArguments:
    _argument_group_name = "model"

    model_name_or_path: str = field(
        default="EleutherAI/pythia-12b",
        metadata={"help": "Hub id or local directory of the base model."},
    )
    adapter_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Train on from an existing LoRA adapter (its weights and LoRA settings, a fresh optimizer "
                          "and learning-rate schedule): an adapter directory, a checkpoint-N directory, a run "
                          "folder (its newest complete checkpoint) or a hub id. A checkpoint in --output_dir is "
                          "resumed instead."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run modelling code shipped with the checkpoint. Off unless you trust it."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel: sdpa (transformers' default), eager, flex_attention, "
                          "flash_attention_2 (GPU, needs flash-attn)."},
    )
    use_auth_token: bool = field(
        default=False,
        metadata={"help": "Send the stored hub token (HF_TOKEN / `hf auth login`) to load gated models."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Hub download cache for models and data."})
    max_memory_MB: int = field(default=80000, metadata={"help": "Memory budget per GPU for device_map."})


@dataclass
class QuantizationArguments:
    """bits, quant_type and double_quant are the base_loading.BaseLoading fields marked
    trained_by_flag: the record saved beside every adapter takes them from here by name."""

    _argument_group_name = "quantization of the frozen base"

    bits: int = field(default=4, metadata={"help": "Base weight precision: 4, 8, 16 or 32."})
    quant_type: str = field(default="nf4", metadata={"help": "4-bit data type: nf4 or fp4."})
    double_quant: bool = field(
        default=True, metadata={"help": "Quantize the quantization constants too (QLoRA double quant)."}
    )
    norms_in_fp32: bool = field(
        default=False,
        metadata={"help": "With --bf16, keep the norm layers in fp32 as the reference did. Their fp32 "
                          "outputs make the projections, the MLP and the residual stream run in fp32 "
                          "(bitsandbytes returns its input's dtype): slower and more activation memory "
                          "(docs/BENCHMARKS.md). Off: the model runs in bf16 throughout."},
    )


@dataclass
class LoraArguments:
    _argument_group_name = "LoRA"

    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_modules: str = field(
        default=ADAPTER_MODULES_ALL,
        metadata={"help": "'all' for every linear layer but the output head, or a comma list of names."},
    )
    full_finetune: bool = field(default=False, metadata={"help": "Train all weights instead of LoRA."})
    new_tokens: str | None = field(
        default=None,
        metadata={"help": "Tokens to add to the vocabulary and train (special markers, a new script's "
                          "characters): a comma list such as '<|tool|>,<|end_tool|>', or a text file with one "
                          "token per line. Only their rows of the embeddings (and output head) train, through peft's "
                          "trainable tokens, saved with the adapter and its tokenizer."},
    )
    new_tokens_in_head: bool = field(
        default=True,
        metadata={"help": "With --new_tokens, train the output head's rows of the new tokens too, so that the "
                          "model learns to write them (False: only read them). Tied heads follow the embedding."},
    )


@dataclass
class DataArguments:
    _argument_group_name = "data"

    eval_dataset_size: int = field(
        default=1024, metadata={"help": "Rows split off for evaluation when the dataset has no eval split."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N evaluation rows."}
    )
    source_max_len: int = field(default=1024, metadata={"help": "Tokens kept of each source (prompt)."})
    target_max_len: int = field(default=256, metadata={"help": "Tokens kept of each target (response)."})
    dataset: str = field(default="alpaca", metadata={"help": dataset_help()})
    dataset_format: str | None = field(default=None, metadata={"help": dataset_format_help()})
    dataset_field: str | None = field(
        default=None,
        metadata={"help": "For a JSON file that is one object holding its rows under a key "
                          '(e.g. {"version": ..., "data": [...]}): that key (datasets\' json field).'},
    )
    dataset_columns: str | None = field(
        default=None,
        metadata={"help": "Map the file's columns to the fields a format reads: FIELD=COLUMN,... (e.g. "
                          "input=context,output=response for Dolly-style rows with --dataset_format alpaca); in "
                          "a YAML config a mapping {FIELD: COLUMN} works too."},
    )
    chat_template: str | None = field(default=None, metadata={"help": chat_template_help()})
    max_seq_len: int | None = field(
        default=None,
        metadata={"help": "Tokens kept of a conversation (chat format); longer ones lose whole turns from the "
                          "end. Default: --source_max_len + --target_max_len."},
    )
    preview_data: int = field(
        default=0,
        metadata={"help": "Print the first N training rows as tokenized, trained text marked, and exit "
                          "without loading the model."},
    )
    preview_format: str = field(
        default="text",
        metadata={"help": "text (trained text in colour on a terminal, in [[ ]] otherwise) or json (one "
                          '{"segments": [{"text", "trained"}]} object per row).'},
    )
    max_truncated_share: float = field(
        default=0.1,
        metadata={"help": "Share of rows (0-1) that may lose tokens to --source_max_len/--target_max_len before "
                          "the cut is logged as a warning instead of an info line. Every cut is counted either "
                          "way; --preview_data prints the length percentiles to choose the limits from."},
    )
    train_on_source: bool = field(
        default=False, metadata={"help": "Also compute the loss on the source (prompt) tokens."}
    )
    padding_free: bool = field(
        default=False,
        metadata={"help": "Concatenate each micro-batch into one row without padding (position ids "
                          "restart per example). Pays off with --attn_implementation flash_attention_2 "
                          "on a GPU; with sdpa or eager attention the packed row costs quadratic "
                          "attention and was slower on CPU (docs/BENCHMARKS.md)."},
    )


@dataclass
class MMLUArguments:
    _argument_group_name = "MMLU evaluation"

    do_mmlu_eval: bool = field(default=False, metadata={"help": "Run MMLU at every evaluation."})
    mmlu_split: str = field(default="eval", metadata={"help": "MMLU split to evaluate: eval or test."})
    mmlu_dataset: str = field(
        default="mmlu-fs", metadata={"help": "mmlu-zs (zero-shot) or mmlu-fs / mmlu (five-shot)."}
    )
    mmlu_data_dir: str | None = field(
        default=None,
        metadata={"help": "Directory with the MMLU prompt files (zero_shot_mmlu_val.json, ...). "
                          "Build them with scripts/build_mmlu_data.py."},
    )
    max_mmlu_samples: int | None = field(default=None, metadata={"help": "Evaluate only N MMLU questions."})
    mmlu_source_max_len: int = field(default=2048, metadata={"help": "Tokens kept of each MMLU prompt."})


@dataclass
class TrainingArguments(transformers.Seq2SeqTrainingArguments):
    """transformers' own arguments with the reference's defaults, plus the non-finite step guard."""

    _argument_group_name = "training (transformers TrainingArguments)"

    report_to: str = field(default="none", metadata={"help": "Loggers: none, tensorboard, wandb, ..."})
    output_dir: str = field(default="./output", metadata={"help": "Where checkpoints and outputs go."})
    optim: str = field(default="paged_adamw_32bit", metadata={"help": "Optimizer."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Micro-batch per device."})
    gradient_accumulation_steps: int = field(default=16, metadata={"help": "Micro-batches per step."})
    max_steps: int = field(default=10000, metadata={"help": "Optimizer steps to train."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    learning_rate: float = field(default=0.0002, metadata={"help": "Peak learning rate."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep raw columns for the collator."})
    max_grad_norm: float = field(default=0.3, metadata={"help": "Gradient clipping norm."})
    do_train: bool = field(default=True, metadata={"help": "Train."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning rate schedule."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="steps", metadata={"help": "When to checkpoint."})
    save_steps: int = field(default=250, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int | None = field(default=40, metadata={"help": "Checkpoints kept."})
    max_consecutive_nonfinite_steps: int = field(
        default=10,
        metadata={"help": "Stop after this many steps in a row with NaN/inf gradients (each is skipped)."},
    )
    resume_with_changed_args: bool = field(
        default=False,
        metadata={"help": "Resume even though settings that change training (learning rate, batch sizes, data, "
                          "model, LoRA, seed) differ from the checkpoint's run; without it such a resume is refused."},
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop training when --metric_for_best_model has not improved for N evaluations in a row "
                          "(transformers' EarlyStoppingCallback); the step it stops at is saved."},
    )
    early_stopping_threshold: float = field(
        default=0.0,
        metadata={"help": "With --early_stopping_patience: how much the metric must improve to count as improving."},
    )
    # Not flags: --use_cache is the reference's generation switch (GenerationArguments), training
    # runs without the cache, and --gradient_checkpointing is a reference flag (ReferenceFlags).
    use_cache: bool = field(default=False, init=False)
    gradient_checkpointing: bool | None = field(default=None, init=False)
    gradient_checkpointing_kwargs: dict | None = field(default=None, init=False)

    def __getstate__(self):
        """Pickled copies (checkpoint-N/training_args.bin) never carry the hub token."""
        return {**self.__dict__, "hub_token": None}

    def _validate_args(self):
        """transformers validates after filling in defaults (eval_steps, metric_for_best_model);
        ours come first, in one line."""
        check_best_model_settings(self)
        super()._validate_args()


def check_best_model_settings(training):
    """Refuse settings with which --load_best_model_at_end or --early_stopping_patience cannot do
    what they say: no evaluation to compare, an evaluation without a checkpoint to load (its best
    would be lost, an earlier one loaded), no metric to watch."""
    if training.load_best_model_at_end:
        check_evaluations("--load_best_model_at_end", training)
        save, evaluate = training.save_strategy.value, training.eval_strategy.value
        if save not in ("best", evaluate):
            raise ArgumentError(f"--load_best_model_at_end loads the checkpoint of the best evaluation: "
                                f"--save_strategy {save} and --eval_strategy {evaluate} must match (or pass "
                                "--save_strategy best)")
        if save == "steps" and training.save_steps != training.eval_steps:
            raise ArgumentError(f"--load_best_model_at_end loads the checkpoint of the best evaluation: --save_steps "
                                f"{training.save_steps:g} must equal --eval_steps {training.eval_steps:g} (or pass "
                                "--save_strategy best)")
    patience, threshold = training.early_stopping_patience, training.early_stopping_threshold
    if not math.isfinite(threshold) or threshold < 0:
        raise ArgumentError(f"--early_stopping_threshold must be a finite number >= 0, got {threshold}")
    if patience is None:
        if threshold:
            raise ArgumentError("--early_stopping_threshold applies with --early_stopping_patience")
        return
    if patience < 1:
        raise ArgumentError(f"--early_stopping_patience counts evaluations: it must be at least 1, got {patience}")
    check_evaluations("--early_stopping_patience", training)
    if training.metric_for_best_model is None:
        raise ArgumentError("--early_stopping_patience watches --metric_for_best_model: name one (eval_loss, "
                            "mmlu_eval_accuracy, ...)")


def check_evaluations(flag, training):
    """flag compares evaluations made during training: there must be some."""
    if training.eval_strategy.value == "no":
        raise ArgumentError(f"{flag} compares evaluations: pass --eval_strategy steps (or epoch)")
    if training.eval_strategy.value == "steps" and 1 <= training.max_steps < training.eval_steps:
        raise ArgumentError(f"{flag} compares evaluations: --eval_steps {training.eval_steps:g} exceeds --max_steps "
                            f"{training.max_steps}, training would end before the first one")


@dataclass
class GenerationArguments:
    """Decoding settings for --predict_with_generate, as in the reference."""

    _argument_group_name = "generation (--do_predict)"

    use_cache: bool = field(
        default=True,
        metadata={"help": "Use the KV cache when generating; training always runs without it."},
    )
    max_new_tokens: int | None = field(default=256, metadata={"help": "Longest generated answer."})
    min_new_tokens: int | None = field(default=None, metadata={"help": "Shortest generated answer."})
    do_sample: bool | None = field(default=False, metadata={"help": "Sample instead of greedy search."})
    num_beams: int | None = field(default=1, metadata={"help": "Beam search width."})
    num_beam_groups: int | None = field(default=1, metadata={"help": "Diverse beam search groups."})
    penalty_alpha: float | None = field(default=None, metadata={"help": "Contrastive search alpha."})
    temperature: float | None = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int | None = field(default=50, metadata={"help": "Sample from the k likeliest tokens."})
    top_p: float | None = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    typical_p: float | None = field(default=1.0, metadata={"help": "Typical decoding mass."})
    diversity_penalty: float | None = field(default=0.0, metadata={"help": "Diverse beam penalty."})
    repetition_penalty: float | None = field(default=1.0, metadata={"help": "Penalty on repeated tokens."})
    length_penalty: float | None = field(default=1.0, metadata={"help": "Beam length penalty."})
    no_repeat_ngram_size: int | None = field(default=0, metadata={"help": "Forbid repeating n-grams."})
    stop_strings: list[str] | None = field(
        default=None,
        metadata={"help": "End an answer where one of these appears; predictions are cut before it. '' for none "
                          "(default: the chat template's turn markers for conversation data, else none)."},
    )
    max_time: float | None = field(default=None, metadata={"help": "Stop a generate call after this many seconds."})


@dataclass
class ReferenceFlags:
    """The reference's flags that transformers 5 renamed or dropped, with the reference's defaults.

    They are read as the setting in REFERENCE_FLAGS unless that setting is given too (it wins).
    """

    _argument_group_name = "reference flags (read as their transformers 5 settings)"

    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "Recompute activations in backward (--activation_checkpointing)."}
    )
    group_by_length: bool = field(
        default=True,
        metadata={"help": "Batch rows of similar length together (--train_sampling_strategy group_by_length)."},
    )
    warmup_ratio: float = field(
        default=0.03, metadata={"help": "Fraction of steps for warmup (--warmup_steps below 1)."}
    )
    adam8bit: bool = field(
        default=False, metadata={"help": "8-bit optimizer states (--optim paged_adamw_8bit)."}
    )
    evaluation_strategy: str | None = field(default=None, metadata={"help": "Old name of --eval_strategy."})


# Reference flag -> (the transformers 5 argument it sets, its value for the flag's value; None: no setting).
REFERENCE_FLAGS = {
    "gradient_checkpointing": ("activation_checkpointing", bool),
    "group_by_length": ("train_sampling_strategy", lambda on: "group_by_length" if on else "random"),
    "warmup_ratio": ("warmup_steps", lambda ratio: ratio),
    "adam8bit": ("optim", lambda on: "paged_adamw_8bit" if on else None),
    "evaluation_strategy": ("eval_strategy", lambda strategy: strategy),
}


class RunArguments(NamedTuple):
    model: ModelArguments
    quantization: QuantizationArguments
    lora: LoraArguments
    data: DataArguments
    mmlu: MMLUArguments
    training: TrainingArguments
    generation: GenerationArguments
    # Names of the settings the user gave (flags or config file): the rest hold defaults. An adapter
    # that training starts from keeps its own settings, except those the user gave.
    given: frozenset = frozenset()


ARGUMENT_CLASSES = (*(cls for cls in RunArguments.__annotations__.values() if dataclasses.is_dataclass(cls)),
                    ReferenceFlags)


# Flags whose package is optional: (the modules, any one of which serves it; what to install).
OPTIONAL_PACKAGES = {
    "--use_liger_kernel": (("liger_kernel",), "pip install liger-kernel (Triton kernels: CUDA GPUs)"),
    "--attn_implementation flash_attention_2": (("flash_attn", "kernels"),
                                                 "pip install flash-attn, or kernels to fetch it from the hub"),
}


def check_optional_package(flag):
    """One line up front instead of an ImportError once the model is loaded."""
    modules, install = OPTIONAL_PACKAGES[flag]
    if all(importlib.util.find_spec(module) is None for module in modules):
        raise ArgumentError(f"{flag} needs {' or '.join(modules)}: {install}")


def validate_arguments(args):
    """Reject bad values and combinations before anything slow is loaded."""
    quantization, training, data = args.quantization, args.training, args.data
    for name in trained_settings():  # --bits, --quant_type: the values a base_loading.json may hold
        choices, value = setting_choices(name), getattr(quantization, name)
        if choices and value not in choices:
            raise ArgumentError(f"--{name} must be one of {choices}, got {value!r}")
    if args.lora.full_finetune and quantization.bits in (4, 8):
        raise ArgumentError("--full_finetune trains 16/32-bit weights: pass --bits 16 or --bits 32")
    if args.lora.full_finetune and args.model.adapter_name_or_path:
        raise ArgumentError("--adapter_name_or_path trains on a LoRA adapter; --full_finetune trains the whole model "
                            "instead: drop one of them")
    if args.lora.new_tokens:
        read_new_tokens(args.lora.new_tokens)
    if training.bf16 and training.fp16:
        raise ArgumentError("--bf16 and --fp16 exclude each other")
    if args.mmlu.mmlu_dataset not in ("mmlu-zs", "mmlu-fs", "mmlu"):
        raise ArgumentError(f"--mmlu_dataset must be mmlu-zs, mmlu-fs or mmlu, got {args.mmlu.mmlu_dataset!r}")
    if args.mmlu.mmlu_split not in ("eval", "test"):
        raise ArgumentError(f"--mmlu_split must be eval or test, got {args.mmlu.mmlu_split!r}")
    metric = training.metric_for_best_model
    if metric and metric.removeprefix("eval_").startswith("mmlu_") and not args.mmlu.do_mmlu_eval:
        raise ArgumentError(f"--metric_for_best_model {metric} is an MMLU score: pass --do_mmlu_eval True")
    if data.preview_format not in PREVIEW_FORMATS:
        raise ArgumentError(f"--preview_format must be one of {PREVIEW_FORMATS}, got {data.preview_format!r}")
    if data.preview_data < 0 or (data.max_seq_len is not None and data.max_seq_len < 2):
        raise ArgumentError("--preview_data must be at least 0 and --max_seq_len at least 2")
    if training.use_liger_kernel:
        check_optional_package("--use_liger_kernel")
    if args.model.attn_implementation == "flash_attention_2":
        check_optional_package("--attn_implementation flash_attention_2")
    validate_sizes_and_steps(args)
    if problem := control_problem(vars(args.generation)):
        raise ArgumentError(problem)
    model_path = args.model.model_name_or_path
    if model_path.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(model_path)):
        raise ArgumentError(f"--model_name_or_path {model_path}: no such directory")


def validate_sizes_and_steps(args):
    """Values that would train something else than asked without a word: prompts cut to nothing,
    a rank-0 adapter, a NaN or negative learning rate, a run of zero steps that would still be
    marked completed, an output folder that is a file."""
    data, training = args.data, args.training
    for flag, value in (("--source_max_len", data.source_max_len), ("--target_max_len", data.target_max_len),
                        ("--lora_r", args.lora.lora_r)):
        if value < 1:
            raise ArgumentError(f"{flag} must be at least 1, got {value}")
    if not math.isfinite(training.learning_rate) or training.learning_rate < 0:
        raise ArgumentError(f"--learning_rate must be a finite number >= 0, got {training.learning_rate}")
    if training.do_train and training.max_steps <= 0 and training.num_train_epochs <= 0:
        raise ArgumentError(f"--max_steps {training.max_steps} with --num_train_epochs {training.num_train_epochs} "
                            "trains 0 steps: give a positive --max_steps, or --max_steps -1 and epochs > 0")
    if os.path.exists(training.output_dir) and not os.path.isdir(training.output_dir):
        raise ArgumentError(f"--output_dir {training.output_dir}: exists and is not a directory")


NUMBER_TYPES = {int: int, float: float, int | None: int, float | None: float}


# Flags a config file may give as a mapping (--dataset_columns FIELD=COLUMN,... as {FIELD: COLUMN}).
MAPPING_FLAGS = ("dataset_columns",)


def check_config_values(path, config):
    """The config file's values with their flags' types. YAML reads ``2e-4`` as a string and
    takes lists and mappings anywhere; a number field gets a number (numeric strings are
    converted), and a list or mapping only where the flag takes one: otherwise a traceback
    deep inside the Trainer, or a string where a number belongs, would follow."""
    types = {f.name: f.type for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}
    checked = {}
    for name, value in config.items():
        declared = types.get(name)  # a key of another command's own (the estimator's --config) passes as is
        takes_many = name in MAPPING_FLAGS or any(kind in str(declared) for kind in ("list", "dict"))
        if declared is not None and isinstance(value, (list, dict)) and not takes_many:
            raise ArgumentError(f"{path}: {name} takes a single value, got {value!r}")
        convert = NUMBER_TYPES.get(declared)
        if convert is not None and value is not None and not isinstance(value, bool):
            try:
                value = convert(value) if isinstance(value, str) else value
            except ValueError:
                raise ArgumentError(f"{path}: {name} must be {convert.__name__}, got {value!r}") from None
            if not isinstance(value, (int, float)) or (convert is int and not isinstance(value, int)):
                raise ArgumentError(f"{path}: {name} must be {convert.__name__}, got {value!r}")
            value = convert(value)
        checked[name] = value
    return checked


def read_config_file(path):
    """The mapping of flag names to values in a .yaml/.json config file."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        config = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ArgumentError(f"{path}: cannot read the config file ({str(error).splitlines()[0]})") from error
    if not isinstance(config, dict):
        raise ArgumentError(f"{path}: a config file holds one mapping of flag names to values")
    return config


def flag_names():
    return [f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init]


def closest_name_hint(name, known, spelling="{}"):
    """' (did you mean ...?)' naming the known name closest to a misspelt one, or ''.

    >>> closest_name_hint("lora_rnk", ["lora_r", "lora_alpha"])
    " (did you mean 'lora_r'?)"
    >>> closest_name_hint("lora-rank", ["local_rank", "lora_r"], spelling="--{}")
    " (did you mean '--lora_r'?)"
    """
    name = name.replace("-", "_")
    close = difflib.get_close_matches(name, known, n=3)
    # Among close names, one of the same group (lora_..., max_...) is the likelier intent.
    same_group = [known_name for known_name in close if known_name.split("_")[0] == name.split("_")[0]]
    best = (same_group or close)[:1]
    return f" (did you mean {spelling.format(best[0])!r}?)" if best else ""


def check_config_keys(path, config, known=None):
    """A misspelt key is an error, as a misspelt flag is, named with the closest known key."""
    known = flag_names() if known is None else known
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ArgumentError(f"{path}: unknown key {unknown[0]!r}{closest_name_hint(unknown[0], known)}")


def translate_reference_flags(values, given):
    """Write the transformers 5 setting of each reference flag into `values` (the given flags by
    name), unless that setting was given too: then it wins, so that a recipe script's reference
    flags can be overridden with either spelling. Returns a one-line notice for each given
    reference flag, saying which way it was read. The reference's defaults apply the same way."""
    reference = ReferenceFlags(**{name: values[name] for name in REFERENCE_FLAGS if name in values})
    notices = []
    if not 0 <= reference.warmup_ratio < 1:
        raise ArgumentError(f"--warmup_ratio is a fraction of the steps in [0, 1), got {reference.warmup_ratio}")
    for name, (setting, convert) in REFERENCE_FLAGS.items():
        value = convert(getattr(reference, name))
        if setting in given:
            if name in given and value is not None and values[setting] != value:
                notices.append(f"--{name} {values[name]} is overridden by --{setting} {values[setting]}")
        elif value is not None:
            values[setting] = value
            if name in given:
                notices.append(f"--{name} {values[name]} is read as --{setting} {value}")
    if values.get("do_predict") and values.setdefault("predict_with_generate", True) is False:
        raise ArgumentError("--do_predict writes generated answers: drop --predict_with_generate False")
    return notices


def given_flags(parser, argv):
    """The flags on the command line by field name, with their parsed values (defaults left out:
    argparse fills in a default only where the namespace has no value yet)."""
    unset = object()
    namespace = argparse.Namespace(**dict.fromkeys(flag_names(), unset))
    namespace, unknown = parser.parse_known_args(argv, namespace=namespace)
    if unknown:
        raise ArgumentError(unknown_arguments_message(unknown, [action.dest for action in parser._actions]))
    return {name: value for name, value in vars(namespace).items() if value is not unset}


def unknown_arguments_message(unknown, known):
    """'unrecognized arguments: ...', with the closest flag for a misspelt one and where a config
    file goes for a misplaced one."""
    first = unknown[0]
    if first.startswith("--"):
        hint = closest_name_hint(first[2:].split("=", 1)[0], known, spelling="--{}")
    elif first.endswith(CONFIG_FILE_SUFFIXES):
        hint = f" (a config file goes first: {first} --flag value ...)"
    else:
        hint = ""
    return f"unrecognized arguments: {' '.join(unknown)}{hint}"


CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def split_config_file(argv):
    """(the config file that opens argv, or None; the flags after it)."""
    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    return None, argv


def read_settings(parser, argv, known=None):
    """The settings given by name: a config file's values (if argv opens with one), then the
    flags after it, which win. Returns (values, sources): sources is the one-line account of
    where they came from, for the log."""
    path, flags = split_config_file(argv)
    from_file = read_config_file(path) if path else {}
    if path:
        check_config_keys(path, from_file, known)
        from_file = check_config_values(path, from_file)
    from_flags = given_flags(parser, flags)
    return {**from_file, **from_flags}, describe_sources(path, from_file, from_flags)


def describe_sources(path, from_file, from_flags):
    """'settings: 12 from run.yaml, 1 from the command line (max_steps)': a setting in both
    counts for the command line, which wins.

    >>> describe_sources("run.yaml", {"lr": 1, "max_steps": 9}, {"max_steps": 25})
    'settings: 1 from run.yaml, 1 from the command line (max_steps)'
    >>> describe_sources(None, {}, {"max_steps": 25, "bf16": True})
    'settings: 2 from the command line'
    """
    parts = [f"{len(set(from_file) - set(from_flags))} from {path}"] if path else []
    if from_flags or not path:
        names = f" ({', '.join(from_flags)})" if path else ""
        parts.append(f"{len(from_flags)} from the command line{names}")
    return "settings: " + ", ".join(parts)


def build_arguments(cls, values):
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})


def parse_arguments(argv=None, environment_defaults=None):
    """Parse flags, or a .yaml/.json config file followed by flags that override it, into
    RunArguments.

    environment_defaults: settings the launcher's environment suggests (qlorakit.launcher); the
    user's own values win over them.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    values, sources = read_settings(HfArgumentParser(ARGUMENT_CLASSES), argv)
    given = set(values)
    values = {**(environment_defaults or {}), **values}
    notices = translate_reference_flags(values, given)
    if "use_cpu" in (environment_defaults or {}) and "use_cpu" not in given:
        notices.append("no GPU or other accelerator found: training on the CPU (--use_cpu True)")
    args = RunArguments(*(build_arguments(cls, values) for cls in ARGUMENT_CLASSES if cls is not ReferenceFlags),
                        given=frozenset(given))
    validate_arguments(args)
    if args.training.process_index == 0:  # once per run, not once per data-parallel rank
        print(sources, file=sys.stderr)  # stderr: --preview_format json keeps stdout to its rows
        for notice in notices:
            logger.warning(notice)
    return args
