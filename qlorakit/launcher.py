"""What the launcher (torchrun, accelerate launch) tells this process through its environment: the
one place the package reads it. Torch-free and known before torch.distributed starts;
``TrainingArguments.world_size`` agrees once the process group is up."""

import os

from .errors import ArgumentError


def world_size():
    """Processes in the run; 1 when started without a launcher."""
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank():
    """This process's GPU index on its machine (0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def launched_sharded():
    """Whether accelerate launched the run with FSDP or DeepSpeed (its config file, not our flags)."""
    return any(os.environ.get(f"ACCELERATE_USE_{name}", "").lower() in ("1", "true") for name in ("FSDP", "DEEPSPEED"))


def distributed_defaults(cuda_available):
    """TrainingArguments defaults for a data-parallel run: gloo where there is no GPU (nccl needs
    one); and no search for unused parameters, which a LoRA on a frozen base does not have and
    which breaks with activation checkpointing."""
    if world_size() == 1:
        return {}
    defaults = {"ddp_find_unused_parameters": False}
    if not cuda_available:
        defaults["ddp_backend"] = "gloo"
    return defaults


def machine_defaults(accelerator_available):
    """Train on the CPU where there is no GPU or other accelerator. The Trainer would otherwise
    refuse --bf16 ("doesn't support bf16/gpu") and, under a launcher, leave the process group
    unused so that every rank trains alone."""
    return {} if accelerator_available else {"use_cpu": True}


def environment_defaults(accelerator_available, cuda_available):
    """All TrainingArguments defaults this machine and launcher suggest; flags override them."""
    return {**machine_defaults(accelerator_available), **distributed_defaults(cuda_available)}


def check_world_size(trainer_world_size):
    """The Trainer must run as many processes as the launcher started, or each rank trains alone
    on its own copy while the log reads like data parallel."""
    if trainer_world_size != world_size():
        raise ArgumentError(f"the launcher started {world_size()} processes but the Trainer runs {trainer_world_size} "
                            "(each rank would train alone): on a machine without a GPU leave --use_cpu at its default")
