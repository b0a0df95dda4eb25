"""Fault injection: kill, corrupt, starve and double-start qlora.py runs, then check the rerun.

    python benchmarks/fault_injection.py --kills 20 --seed 0            # the long form
    python benchmarks/fault_injection.py --scenarios corrupt-optimizer mid-save-kill   # a few

Every scenario trains the tiny LLaMA for 6 steps with a checkpoint every 2 (LoRA dropout on, so
the RNG state matters; 16 micro-batches of 4 rows per step, qlora.py's default, unless
--gradient_accumulation_steps says otherwise) in an output folder of its own, does something bad
to it, reruns the same command and compares the outcome with an uninterrupted run's:

- kill-N: SIGKILL at a random moment (uniform over the uninterrupted run's duration);
- mid-save-kill: SIGKILL as soon as a checkpoint folder appears without its marker (a save
  in progress), after a random delay of up to 0.2 s;
- corrupt-*: a finished run's newest checkpoint damaged (optimizer.pt deleted or emptied,
  trainer_state.json or rng_state.pth overwritten with garbage, the adapter truncated or one
  byte changed, adapter_model/ deleted), its ``completed`` marker removed;
- small-disk: the output folder on a 1 MiB tmpfs (needs root and mount; skipped otherwise):
  the save must stop in one line, exit status 2, naming the folder;
- two-runs: two runs started at once on one folder: one must refuse in one line, exit 2,
  with "locked" in it (this scenario needs the output-folder lock of qlorakit.train).

For kills and corruptions the rerun must finish and leave a final adapter bit-identical to the
uninterrupted run's (resume restores adapter, optimizer, scheduler and RNG exactly on CPU).
Prints one line per scenario and a summary; exits 1 if any scenario failed.
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from safetensors.torch import load_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPACA = os.path.join(REPO_ROOT, "qlorakit", "sample_data", "alpaca_sample.json")
STEPS, SAVE_EVERY = 6, 2
DEFAULT_ACCUMULATION = 16  # micro-batches per step: qlora.py's default
ACCUMULATION = DEFAULT_ACCUMULATION  # main sets it from --gradient_accumulation_steps
CORRUPTIONS = ("optimizer", "empty-optimizer", "trainer-state", "rng-state", "adapter-truncated",
               "adapter-byte", "adapter-dir")


def run_command(model_dir, output_dir):
    return [sys.executable, os.path.join(REPO_ROOT, "qlora.py"), "--model_name_or_path", model_dir,
            "--output_dir", output_dir, "--dataset", ALPACA, "--dataset_format", "alpaca", "--use_cpu",
            "--bf16", "True", "--per_device_train_batch_size", "4", "--source_max_len", "64",
            "--target_max_len", "64", "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.1",
            "--learning_rate", "0.003", "--logging_steps", "1", "--seed", "0",
            "--gradient_accumulation_steps", str(ACCUMULATION), "--max_steps", str(STEPS),
            "--save_steps", str(SAVE_EVERY)]


def start(model_dir, output_dir, capture=True):
    """A run in the background; without capture its output is dropped (a full pipe would stall it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(run_command(model_dir, output_dir), cwd=REPO_ROOT, env=env, text=True,
                            stdout=output, stderr=output)


def last_line(process):
    """Wait for the run; (exit status, last stderr line)."""
    _, stderr = process.communicate()
    lines = stderr.strip().splitlines()
    return process.returncode, lines[-1] if lines else ""


def finish(model_dir, output_dir):
    return last_line(start(model_dir, output_dir))


def final_adapter(output_dir):
    path = os.path.join(output_dir, f"checkpoint-{STEPS}", "adapter_model", "adapter_model.safetensors")
    return load_file(path)


def same_adapter(output_dir, reference):
    ours = final_adapter(output_dir)
    return ours.keys() == reference.keys() and all(ours[k].equal(reference[k]) for k in reference)


def rerun_and_compare(model_dir, output_dir, reference):
    status, last = finish(model_dir, output_dir)
    if status != 0:
        return f"rerun failed ({status}): {last}"
    return None if same_adapter(output_dir, reference) else "final adapter differs from the uninterrupted run's"


def kill_at(model_dir, output_dir, delay):
    process = start(model_dir, output_dir, capture=False)
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()


def save_in_progress(output_dir):
    if not os.path.isdir(output_dir):
        return False
    return any(name.startswith("checkpoint-")
               and not os.path.exists(os.path.join(output_dir, name, "checkpoint_complete"))
               for name in os.listdir(output_dir))


def kill_mid_save(model_dir, output_dir, rng):
    process = start(model_dir, output_dir, capture=False)
    while process.poll() is None and not save_in_progress(output_dir):
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.2))
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()


def corrupt(checkpoint_dir, kind):
    adapter = os.path.join(checkpoint_dir, "adapter_model", "adapter_model.safetensors")
    if kind == "optimizer":
        os.remove(os.path.join(checkpoint_dir, "optimizer.pt"))
    elif kind == "empty-optimizer":
        open(os.path.join(checkpoint_dir, "optimizer.pt"), "wb").close()
    elif kind in ("trainer-state", "rng-state"):
        path = os.path.join(checkpoint_dir, "trainer_state.json" if kind == "trainer-state" else "rng_state.pth")
        size = os.path.getsize(path)
        with open(path, "wb") as stream:
            stream.write(b"\x07" * size)
    elif kind == "adapter-truncated":
        with open(adapter, "r+b") as stream:
            stream.truncate(os.path.getsize(adapter) // 2)
    elif kind == "adapter-byte":
        with open(adapter, "r+b") as stream:
            stream.seek(-1, os.SEEK_END)
            last = stream.read(1)
            stream.seek(-1, os.SEEK_END)
            stream.write(bytes([last[0] ^ 0xFF]))
    elif kind == "adapter-dir":
        shutil.rmtree(os.path.join(checkpoint_dir, "adapter_model"))
    else:
        raise ValueError(kind)


def scenario_corrupt(kind, model_dir, output_dir, reference):
    status, last = finish(model_dir, output_dir)
    if status != 0:
        return f"first run failed: {last}"
    os.remove(os.path.join(output_dir, "completed"))
    corrupt(os.path.join(output_dir, f"checkpoint-{STEPS}"), kind)
    return rerun_and_compare(model_dir, output_dir, reference)


def scenario_small_disk(model_dir, output_dir):
    if os.geteuid() != 0 or not shutil.which("mount"):
        return "skipped: needs root and mount for a tmpfs"
    os.makedirs(output_dir)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", output_dir], capture_output=True)
    if mounted.returncode != 0:
        return f"skipped: cannot mount a tmpfs here ({mounted.stderr.decode().strip()})"
    try:
        status, last = finish(model_dir, output_dir)
    finally:
        subprocess.run(["umount", output_dir], check=False)
    if status == 2 and "saving" in last and "failed" in last and "checkpoint-" in last:
        return None
    return f"expected one line and exit 2, got {status}: {last}"


def scenario_two_runs(model_dir, output_dir):
    """Needs the output-folder lock of qlorakit.train: the second run refuses with 'locked'."""
    first, second = start(model_dir, output_dir), start(model_dir, output_dir)
    results = [last_line(first), last_line(second)]
    refused = [line for status, line in results if status == 2 and "locked" in line]
    finished = [status for status, _ in results if status == 0]
    if len(refused) == 1 and len(finished) == 1:
        return None
    return f"expected one run to finish and one to refuse with 'locked'; got {results}"


def run_scenario(name, model_dir, work_dir, reference, rng, duration):
    output_dir = os.path.join(work_dir, name)
    if name.startswith("corrupt-"):
        return scenario_corrupt(name[len("corrupt-"):], model_dir, output_dir, reference)
    if name == "small-disk":
        return scenario_small_disk(model_dir, output_dir)
    if name == "two-runs":
        return scenario_two_runs(model_dir, output_dir)
    if name.startswith("mid-save-kill"):
        kill_mid_save(model_dir, output_dir, rng)
    elif name.startswith("kill-"):
        kill_at(model_dir, output_dir, rng.uniform(0, duration))
    else:
        raise ValueError(f"unknown scenario {name}")
    return rerun_and_compare(model_dir, output_dir, reference)


def all_scenarios(kills):
    return ([f"kill-{i}" for i in range(kills)] + [f"mid-save-kill-{i}" for i in range(max(1, kills // 4))]
            + [f"corrupt-{kind}" for kind in CORRUPTIONS] + ["small-disk", "two-runs"])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", help="a tiny model (built in the work folder when absent)")
    parser.add_argument("--work_dir", help="where the runs go (a temporary folder when absent)")
    parser.add_argument("--kills", type=int, default=20, help="random-moment SIGKILL scenarios")
    parser.add_argument("--scenarios", nargs="+", help="run only these (e.g. kill-0 mid-save-kill corrupt-optimizer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=DEFAULT_ACCUMULATION,
                        help=f"micro-batches per step of every run (default {DEFAULT_ACCUMULATION}, qlora.py's)")
    return parser.parse_args(argv)


def main(argv=None):
    global ACCUMULATION
    args = parse_args(argv)
    ACCUMULATION = args.gradient_accumulation_steps
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="fault-injection-")
    model_dir = args.model_dir or os.path.join(work_dir, "tiny-model")
    if not os.path.isdir(model_dir):
        subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "make_tiny_model.py"), model_dir],
                       check=True, capture_output=True)
    began = time.monotonic()
    status, last = finish(model_dir, os.path.join(work_dir, "uninterrupted"))
    if status != 0:
        print(f"the uninterrupted run failed: {last}")
        return 1
    duration, reference = time.monotonic() - began, final_adapter(os.path.join(work_dir, "uninterrupted"))
    rng = random.Random(args.seed)
    failed = skipped = 0
    for name in args.scenarios or all_scenarios(args.kills):
        problem = run_scenario(name, model_dir, work_dir, reference, rng, duration)
        skipped += bool(problem and problem.startswith("skipped"))
        failed += bool(problem and not problem.startswith("skipped"))
        print(f"{name}: {problem or 'ok'}", flush=True)
    total = len(args.scenarios or all_scenarios(args.kills))
    print(f"{total} scenarios: {total - failed - skipped} ok, {failed} failed, {skipped} skipped "
          f"(uninterrupted run {duration:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
