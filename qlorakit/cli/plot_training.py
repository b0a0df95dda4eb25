"""Plot a run's training loss, eval loss and MMLU accuracy against the step.

    python scripts/plot_training.py output/guanaco-7b [--output curves.png]

Reads the newest trainer_state.json of the run (output_dir or its newest checkpoint), so it
works while training is still going. Without --output the picture goes to
OUTPUT_DIR/training_curves.png.
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qlorakit.checkpoints import list_checkpoints  # noqa: E402
from qlorakit.errors import InputError, run_main  # noqa: E402
from qlorakit.jsonl import read_json_object  # noqa: E402


def find_trainer_state(run_dir):
    candidates = [run_dir, *list_checkpoints(run_dir)]
    paths = [os.path.join(c, "trainer_state.json") for c in candidates]
    existing = [p for p in paths if os.path.isfile(p)]
    if not existing:
        raise InputError(f"no trainer_state.json in {run_dir} or its checkpoints")
    return max(existing, key=os.path.getmtime)


def collect_curves(log_history):
    """{name: ([steps], [values])} for the series worth plotting, in step order."""
    wanted = {"loss": "train loss", "eval_loss": "eval loss", "mmlu_loss": "MMLU loss",
              "mmlu_eval_accuracy": "MMLU accuracy", "mmlu_test_accuracy": "MMLU accuracy"}
    curves = {}
    for entry in log_history:
        for key, label in wanted.items():
            if key in entry:
                steps, values = curves.setdefault(label, ([], []))
                steps.append(entry["step"])
                values.append(entry[key])
    return curves


def loss_axes_text(loss_labels):
    """Title and axis labels that say what the loss panel shows.

    >>> loss_axes_text(["train loss"])["title"]
    'Train loss by optimizer step'
    """
    shown = " and ".join(loss_labels)
    return {"title": f"{shown[0].upper()}{shown[1:]} by optimizer step", "xlabel": "optimizer step",
            "ylabel": "cross-entropy (nats per trained token)"}


def plot_curves(curves, path):
    losses = {k: v for k, v in curves.items() if "loss" in k}
    accuracy = curves.get("MMLU accuracy")
    figure, axes = plt.subplots(1, 2 if accuracy else 1, figsize=(11 if accuracy else 6, 4), squeeze=False)
    for label, (steps, values) in losses.items():
        axes[0][0].plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
    axes[0][0].set(**loss_axes_text(list(losses)))
    axes[0][0].legend()
    if accuracy:
        axes[0][1].plot(*accuracy, marker="o", color="tab:green")
        axes[0][1].set(xlabel="optimizer step", ylabel="accuracy (fraction correct)",
                       title="MMLU accuracy by optimizer step")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--output", help="PNG path (default RUN_DIR/training_curves.png)")
    args = parser.parse_args(argv)
    state_path = find_trainer_state(args.run_dir)
    curves = collect_curves(read_json_object(state_path).get("log_history", []))
    if not curves:
        raise InputError(f"{state_path} has no logged losses yet")
    output = args.output or os.path.join(args.run_dir, "training_curves.png")
    plot_curves(curves, output)
    print(output)


def console_main():
    """The ``qlora-plot-training`` command."""
    return run_main(main)
