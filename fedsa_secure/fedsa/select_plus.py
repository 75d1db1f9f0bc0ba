"""`fedsa+` selection (ours, not the paper's): LogME transferability on the node, concentrated probabilities at the aggregator.

Node side: `output_transferability` scores how much the teacher's training taught it about the
aggregator's probe labels: the LogME of its logits as a z-score against the same logits on
shuffled labels (`logme_significance`), minus that of the same network at its initialisation
(public: a seeded draw). Only this scalar leaves the node, and it is post-processing of the DP
teacher on the aggregator's own probe. Unlike the Grad-CAM score it does not depend on the
student, so a node computes it once. Aggregator side:
`concentrated_probabilities` turns the scores into selection probabilities whose odds grow as
exp(score difference / temperature), so a teacher whose score is clearly lower gets (almost) no
slots; the faithful `softmax(minmax(.))` caps the best-to-worst odds at e.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedsa_secure.data import LabelledSet, task_input
from fedsa_secure.fedsa.logme import logme_significance

# Scores are differences of z-scores. On MNIST-1D at 1% with DP teachers (seeds 0-2) the digit
# teachers score 11-23, the parity teacher 3.6-5.4, mod-3 -0.1 to 3.4 and the unrelated ones -16 to
# 2.1: raw LogME put the latter four within 0.01 of each other, and z-scores alone ranked an unrelated
# teacher third on one seed, because an untrained network's logits are random features of the input
# that explain labels by chance (docs/research/2026-12-06-dp-teacher.md). At 1.0 a teacher two
# deviations lower has odds 1 : e^2 against a higher one.
TEMPERATURE = 1.0


@torch.no_grad()
def teacher_logits(teacher: nn.Module, task: str, images: np.ndarray) -> np.ndarray:
    """The frozen teacher's logits [N, C_teacher] on raw images (mapped to its task's input)."""
    teacher.eval()
    return teacher(torch.from_numpy(task_input(task, images))).numpy().astype(np.float64)


def output_transferability(teacher: nn.Module, task: str, probe: LabelledSet, initial: nn.Module | None = None) -> float:
    """Node side: how far the LogME of the teacher's logits on the probe lies above chance, in deviations, minus
    the same for `initial`, the network the teacher's training started from (higher: training taught it more)."""
    score = logme_significance(teacher_logits(teacher, task, probe.x), probe.y, probe.num_classes)
    if initial is None:
        return score
    return score - logme_significance(teacher_logits(initial, task, probe.x), probe.y, probe.num_classes)


def concentrated_probabilities(
    scores: Sequence[float], temperature: float = TEMPERATURE, top_k: int | None = None
) -> np.ndarray:
    """Aggregator side: p_i proportional to exp((s_i - max s) / temperature), restricted to the `top_k` best if given."""
    s = np.asarray(scores, dtype=np.float64)
    if not temperature > 0 or s.size == 0 or (top_k is not None and not 0 < top_k <= s.size):
        raise ValueError(f"need scores, temperature > 0 and 0 < top_k <= {s.size}; got {temperature}, {top_k}")
    w = np.exp((s - s.max()) / temperature)
    if top_k is not None:
        w[np.argsort(-s, kind="stable")[top_k:]] = 0.0
    return w / w.sum()
