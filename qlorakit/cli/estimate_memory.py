"""Estimate the peak GPU memory of the qlora.py run you are about to start, before renting a GPU.

Takes qlora.py's own flags, or its .yaml/.json config file (flags after the file override it),
with qlora.py's defaults, plus the options of the EstimatorArguments below:

    qlora-estimate-memory --config llama-7b --bf16 --source_max_len 16 --target_max_len 512 --lora_dropout 0.1
    qlora-estimate-memory examples/configs/tiny_demo.yaml --gpu_memory_gb 8 --json
    qlora-estimate-memory --model_name_or_path /models/llama-2-7b --bf16 --target_max_len 2048

The components and how they are counted: qlorakit.memory and docs/MEMORY.md.
"""

import json
import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from qlorakit.config import ARGUMENT_CLASSES, read_settings, translate_reference_flags
from qlorakit.errors import ArgumentError, InputError, run_main
from qlorakit.memory import (DEFAULT_OVERHEAD_MB, GB, describe_assumptions, estimate, longest_row,
                             nearest_fitting_settings, summarize)
from qlorakit.model_skeleton import LLAMA_CONFIGS, load_shape, preset_shape

logger = logging.getLogger(__name__)


# qlora.py's settings that estimate() takes, under the same names but one.
ESTIMATE_FLAGS = ("bits", "double_quant", "lora_r", "lora_modules", "lora_dropout", "source_max_len",
                  "target_max_len", "max_seq_len", "per_device_train_batch_size", "optim", "bf16", "norms_in_fp32",
                  "attn_implementation")


@dataclass
class EstimatorArguments:
    """Options of the estimate itself; everything else is a qlora.py flag."""

    config: str | None = field(
        default=None,
        metadata={"help": "A built-in LLaMA-1 shape (nothing is read or downloaded); wins over "
                          "--model_name_or_path.", "choices": sorted(LLAMA_CONFIGS)},
    )
    gpu_memory_gb: float = field(default=24, metadata={"help": "The card to compare with, in GiB."})
    overhead_mb: float = field(
        default=DEFAULT_OVERHEAD_MB,
        metadata={"help": "CUDA context, cuBLAS workspaces and allocator fragmentation, in MiB."},
    )
    json: bool = field(default=False, metadata={"help": "Print one JSON object instead of a table."})


class OneLineErrorParser(HfArgumentParser):
    """Bad flags become one line and exit 2 (run_main) instead of argparse's usage block."""

    def error(self, message):
        raise ArgumentError(message)


def parse_flags(argv):
    """{flag name: value} over qlora.py's argument dataclasses and EstimatorArguments: the
    defaults, then a config file's values, then the flags, with the reference flags translated
    as qlora.py translates them.

    Values stay as given: the dataclasses are not built, because TrainingArguments checks the
    machine it runs on (--bf16 without a GPU is refused) and the estimate is made before renting one.
    """
    parser = OneLineErrorParser((EstimatorArguments, *ARGUMENT_CLASSES), description=__doc__.splitlines()[0])
    parser.set_defaults(model_name_or_path=None)  # qlora.py's default is a hub id: read only one given
    given, _ = read_settings(parser, argv)
    for notice in translate_reference_flags(given, set(given)):
        logger.warning(notice)
    return {**vars(parser.parse_args([])), **given}


def check_modeled(values):
    """One line for runs the estimate does not cover, instead of a wrong number."""
    if values["full_finetune"]:
        raise ArgumentError("--full_finetune is not estimated: the estimate covers LoRA training")
    if values["fp16"]:
        raise ArgumentError("--fp16 is not estimated: the estimate covers --bf16 and fp32 (neither flag) training")
    if not values["config"] and not values["model_name_or_path"]:
        raise ArgumentError(f"pass --model_name_or_path (a local directory or hub id) or --config "
                            f"{'|'.join(sorted(LLAMA_CONFIGS))}")


def estimate_arguments(values):
    """estimate()'s arguments, read from the settings by name."""
    return {**{flag: values[flag] for flag in ESTIMATE_FLAGS}, "gradient_checkpointing": values["activation_checkpointing"]}


def format_table(report, name):
    lines = [f"QLoRA training memory estimate: {name}", report["assumptions"], f"{'component':<28}{'MiB':>12}"]
    lines += [f"{component:<28}{value:>12,.1f}" for component, value in report["components_mb"].items()]
    lines.append(f"{'total (estimated peak)':<28}{report['total_mb']:>12,.1f}")
    verdict = "fits" if report["fits"] else "does NOT fit"
    lines.append(f"{verdict} in {report['gpu_memory_gb']:g} GiB ({report['gpu_memory_gb'] * 1024:,.0f} MiB)")
    if not report["fits"] and report["fits_with_paging"]:
        lines.append("fits only if the paged optimizer evicts its states to CPU RAM (slower steps)")
    if not report["fits"]:
        lines += format_suggestions(report["nearest_fitting"])
    return "\n".join(lines)


def format_suggestions(nearest_fitting):
    if not nearest_fitting:
        return ["no single change fits: combine the changes below, or pick a larger card",
                "  (smaller batch with more accumulation, shorter rows, activation checkpointing, "
                "--optim paged_adamw_8bit, FSDP)"]
    return ["each of these alone fits (estimated peak per GPU):",
            *(f"  {item['change']}: {item['total_mb'] / 1024:,.1f} GiB" for item in nearest_fitting)]


def main(argv=None):
    values = parse_flags(sys.argv[1:] if argv is None else list(argv))
    check_modeled(values)
    arguments = estimate_arguments(values)
    name = values["config"] or values["model_name_or_path"]
    capacity = values["gpu_memory_gb"] * GB
    try:
        shape = preset_shape(values["config"]) if values["config"] else load_shape(values["model_name_or_path"])
        components = estimate(shape, overhead_mb=values["overhead_mb"], **arguments)
        report = summarize(components, values["gpu_memory_gb"], arguments["optim"])
        nearest = [] if report["fits"] else nearest_fitting_settings(
            shape, arguments, values["gradient_accumulation_steps"], capacity, values["overhead_mb"])
    except (ValueError, OSError, AttributeError) as error:
        raise InputError(str(error).strip().splitlines()[0]) from error
    report["assumptions"] = describe_assumptions(arguments, values["gradient_accumulation_steps"])
    report["nearest_fitting"] = [{"change": change, "total_mb": summarize(changed, values["gpu_memory_gb"],
                                                                          arguments["optim"])["total_mb"]}
                                 for change, changed in nearest]
    if values["json"]:
        # Sizes ending in _mb are MiB (2**20 bytes) and gpu_memory_gb is GiB, as in earlier versions.
        print(json.dumps({"model": name, "bits": values["bits"], "lora_r": values["lora_r"],
                          "seq_len": longest_row(values["source_max_len"], values["target_max_len"], values["max_seq_len"]),
                          "per_device_train_batch_size": values["per_device_train_batch_size"],
                          "bf16": values["bf16"], "norms_in_fp32": values["norms_in_fp32"], **report}))
    else:
        print(format_table(report, name))
    return 0


def console_main():
    """The ``qlora-estimate-memory`` command."""
    return run_main(main)
