"""`fedsa+` selection (ours, not the paper's): LogME transferability on the node, concentrated probabilities at the aggregator.

Node side: `output_transferability` scores how well the frozen teacher's logits explain the
aggregator's probe labels (LogME); only this scalar leaves the node. Unlike the Grad-CAM score it
does not depend on the student, so a node computes it once. Aggregator side:
`concentrated_probabilities` turns the scores into selection probabilities whose odds grow as
exp(score difference / temperature), so a teacher whose score is clearly lower gets (almost) no
slots; the faithful `softmax(minmax(.))` caps the best-to-worst odds at e.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedsa_secure.data import LabelledSet, task_input
from fedsa_secure.fedsa.logme import logme
from fedsa_secure.models import ConvNet

# LogME is an evidence per probe sample; on MNIST-5k at 1% relevant teachers score 0.06-0.11 above
# unrelated ones and a related-task teacher 0.01-0.02 above them. At 0.005 an unrelated teacher has
# odds below e^-12 against a relevant one and about 1 : 10 against the related-task one.
TEMPERATURE = 0.005


@torch.no_grad()
def teacher_logits(teacher: ConvNet, task: str, images: np.ndarray) -> np.ndarray:
    """The frozen teacher's logits [N, C_teacher] on raw images (mapped to its task's input)."""
    teacher.eval()
    return teacher(torch.from_numpy(task_input(task, images))).numpy().astype(np.float64)


def output_transferability(teacher: ConvNet, task: str, probe: LabelledSet) -> float:
    """Node side: LogME of the teacher's logits on the probe images against the probe labels (higher: more useful)."""
    return logme(teacher_logits(teacher, task, probe.x), probe.y, probe.num_classes)


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
