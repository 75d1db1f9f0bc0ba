"""How far apart two models are on the same test records: their accuracy difference with an exact 95% interval.

Paired record by record, only the records where exactly one model is right carry information.
Given m such records, the number w where the first model is right is Binomial(m, p) and the
accuracy difference is (2w - m) / n; its interval is the Clopper-Pearson interval of p (scipy's
`binomtest`) mapped through (2p - 1) m / n, so it always lies within [-m/n, m/n]. It says what
the test set's size can tell apart, not how much a rerun would move either model (DP noise and
adaptation add their own spread on top).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest

CONFIDENCE = 0.95


def paired_accuracy_difference(
    hits: Sequence[bool] | np.ndarray, reference_hits: Sequence[bool] | np.ndarray
) -> tuple[float, float, float]:
    """(accuracy difference, low, high) of a model against a reference on the same test records.

    Two models that agree on every record differ by exactly 0 with the interval [0, 0].
    """
    mine, theirs = np.asarray(hits, dtype=bool), np.asarray(reference_hits, dtype=bool)
    if mine.shape != theirs.shape or mine.ndim != 1 or mine.size == 0:
        raise ValueError(f"need the same test records for both models, got {mine.shape} and {theirs.shape}")
    n = mine.size
    wins, losses = int(np.sum(mine & ~theirs)), int(np.sum(~mine & theirs))
    disagreements = wins + losses
    difference = (wins - losses) / n
    if disagreements == 0:
        return difference, difference, difference
    share = binomtest(wins, disagreements).proportion_ci(CONFIDENCE, method="exact")
    scale = disagreements / n
    return difference, (2 * share.low - 1) * scale, (2 * share.high - 1) * scale
