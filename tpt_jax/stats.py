"""Confidence intervals for accuracies (pure Python, layer 0).

Problems are the unit of sampling: the samples of one problem are correlated, so intervals are
computed over per-problem accuracies, not over samples.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def mean_ci(values: Sequence[float], low: float = 0.0) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95% interval over independent units, clipped to
    [low, 1]."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = Z95 * statistics.stdev(values) / math.sqrt(len(values))
    return mean, max(low, mean - half), min(1.0, mean + half)


def paired_difference(
    after: Mapping[str, float], before: Mapping[str, float]
) -> tuple[float, float, float] | None:
    """Mean per-problem accuracy change on the problems both evaluated, with its 95% interval:
    pairing removes the between-problem spread, so it resolves smaller changes than two
    separate intervals do."""
    shared = sorted(set(after) & set(before))
    if not shared:
        return None
    return mean_ci([after[p] - before[p] for p in shared], low=-1.0)


def wilson(correct: int, total: int) -> tuple[float, float]:
    if total == 0:
        return 0.0, 0.0
    p = correct / total
    denom = 1 + Z95**2 / total
    centre = (p + Z95**2 / (2 * total)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95**2 / (4 * total**2)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
