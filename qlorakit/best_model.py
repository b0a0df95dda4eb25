"""The metric that picks the best checkpoint (--metric_for_best_model), and how the best is named.

transformers looks the metric up with an ``eval_`` prefix (``eval_loss``); the MMLU scores are
logged under their own names (``mmlu_eval_accuracy``, ``mmlu_loss``), so both spellings are tried.
"""

import os
from typing import NamedTuple

from .errors import ArgumentError


def prefixed_name(metric_for_best_model):
    """The key transformers reads: the name with ``eval_`` in front unless it has it."""
    return metric_for_best_model if metric_for_best_model.startswith("eval_") else f"eval_{metric_for_best_model}"


def with_prefixed_name(metrics, metric_for_best_model):
    """An evaluation's metrics in which transformers finds metric_for_best_model: as they are, or with
    the MMLU score it names copied under the prefixed key. A metric the evaluation did not log is an
    ArgumentError naming what it logged: the first evaluation is where that comes to light."""
    wanted = prefixed_name(metric_for_best_model)
    if wanted in metrics:
        return metrics
    if metric_for_best_model in metrics:
        return {**metrics, wanted: metrics[metric_for_best_model]}
    raise ArgumentError(f"--metric_for_best_model {metric_for_best_model}: the evaluation logged no such metric "
                        f"(it logged {', '.join(sorted(metrics))})")


class BestEvaluation(NamedTuple):
    """The best evaluation so far: its step, metric and value, and its checkpoint (None when that
    step was not saved)."""

    step: int
    metric: str
    value: float
    checkpoint: str | None

    def __str__(self):
        score = f"{self.metric} {self.value:.4g}"
        if self.checkpoint is None:
            return f"step {self.step} ({score}), which has no checkpoint"
        return f"{os.path.basename(self.checkpoint)} ({score})"


def best_evaluation(state, metric_for_best_model):
    """The TrainerState's best evaluation, or None before any."""
    if state.best_metric is None or not state.best_global_step:
        return None
    saved = state.best_model_checkpoint
    if saved is not None and os.path.basename(os.path.normpath(saved)) != f"checkpoint-{state.best_global_step}":
        saved = None  # the best step was not saved; the recorded checkpoint is an earlier best
    return BestEvaluation(state.best_global_step, metric_for_best_model, state.best_metric, saved)
