"""What the launcher (torchrun, accelerate launch) tells this process through its environment: the
one place the package reads it. Torch-free and known before torch.distributed starts;
``TrainingArguments.world_size`` agrees once the process group is up."""

import os


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
