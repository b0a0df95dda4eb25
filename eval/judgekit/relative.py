"""Score relative to a reference system (the paper's Vicuna-benchmark table). Pure and seeded.

QLoRA paper, section 5 (after Vicuna's evaluation): the judge gives each of two answers a
1-10 score; a system's relative score is its total score divided by the reference system's
(ChatGPT's) total, over the same judgments, counting both presentation orders. We also report
the score in each order, since the judge favours the first answer, and a 95% bootstrap
interval obtained by resampling questions.
"""

import collections
import dataclasses

import numpy as np

from .verdicts import SCORES, score_pair

BOOTSTRAP_SAMPLES = 2000


@dataclasses.dataclass
class RelativeScore:
    model: str
    score: float  # percent of the reference's total, both orders summed
    score_first: float  # the system's answer shown first (nan if no such judgment)
    score_second: float  # the system's answer shown second
    low: float  # 2.5th bootstrap percentile over questions
    high: float  # 97.5th
    judgments: int
    unparsable: int


def _ratio(system_total, reference_total):
    return float(100.0 * system_total / reference_total) if reference_total > 0 else float("nan")


def collect_pairs(judgments, reference):
    """``{system: [(question_id, shown_first, system_score, reference_score)]}`` and per-system
    counts of unparsable verdicts; judgments without the reference, and verdicts of another kind
    (other_kinds counts them), are ignored."""
    pairs, unparsable = {}, {}
    for judgment in judgments:
        if reference not in (judgment.model1, judgment.model2) or judgment.model1 == judgment.model2:
            continue
        if judgment.verdict != SCORES:
            continue
        shown_first = judgment.model2 == reference
        system = judgment.model1 if shown_first else judgment.model2
        pairs.setdefault(system, [])
        unparsable.setdefault(system, 0)
        pair = score_pair(judgment.score)
        if pair is None:  # an unparsable reply: no scores to add up
            unparsable[system] += 1
            continue
        first, second = pair
        system_score, reference_score = (first, second) if shown_first else (second, first)
        pairs[system].append((judgment.question_id, shown_first, system_score, reference_score))
    return pairs, unparsable


def bootstrap_interval(system_by_question, reference_by_question, samples, rng):
    """2.5th and 97.5th percentiles of the relative score when questions are resampled."""
    count = len(system_by_question)
    picks = rng.integers(0, count, size=(samples, count))  # (B, Q)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (100.0 * system_by_question[picks].sum(axis=1) / reference_by_question[picks].sum(axis=1))
    low, high = np.nanpercentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def score_system(system, rows, unparsable, samples, rng):
    """``RelativeScore`` of one system from its ``collect_pairs`` rows."""
    rows_array = np.array([(first, sys_s, ref_s) for _, first, sys_s, ref_s in rows], dtype=float).reshape(-1, 3)
    shown_first, system_scores, reference_scores = rows_array.T
    first_mask = shown_first == 1.0
    questions = sorted({qid for qid, *_ in rows}, key=str)
    position = {qid: i for i, qid in enumerate(questions)}
    system_q, reference_q = np.zeros(len(questions)), np.zeros(len(questions))
    for (qid, _, sys_s, ref_s) in rows:
        system_q[position[qid]] += sys_s
        reference_q[position[qid]] += ref_s
    low, high = bootstrap_interval(system_q, reference_q, samples, rng) if questions else (np.nan, np.nan)
    return RelativeScore(
        model=system,
        score=_ratio(system_scores.sum(), reference_scores.sum()),
        score_first=_ratio(system_scores[first_mask].sum(), reference_scores[first_mask].sum()),
        score_second=_ratio(system_scores[~first_mask].sum(), reference_scores[~first_mask].sum()),
        low=low,
        high=high,
        judgments=len(rows),
        unparsable=unparsable,
    )


def compute_relative_scores(judgments, reference, samples=BOOTSTRAP_SAMPLES, seed=0):
    """One ``RelativeScore`` per system judged against ``reference``, best first."""
    pairs, unparsable = collect_pairs(judgments, reference)
    rng = np.random.default_rng(seed)
    scores = [score_system(system, pairs[system], unparsable[system], samples, rng) for system in sorted(pairs)]
    return sorted(scores, key=lambda s: -s.score if s.score == s.score else float("inf"))


def other_kinds(judgments):
    """``{kind: count}`` of the verdicts that are not 10-point score pairs, which relative scores skip."""
    return dict(collections.Counter(judgment.verdict for judgment in judgments if judgment.verdict != SCORES))
