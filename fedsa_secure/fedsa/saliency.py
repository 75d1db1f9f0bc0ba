"""Saliency-based selection (FedSA step 1): Grad-CAM maps, transferability, selection probabilities, cohort draw.

Follows the authors' code (KamalEngine `kamal/utils/saliency_map.py` GradCam and
`kamal/utils/model_select.py`), with two deliberate differences: maps stay float (no uint8
round trip) and a constant map normalises to all ones instead of 0/0 = NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F


class Explainable(Protocol):
    """What Grad-CAM needs of a model: last-block maps from `features`, logits of those maps from `classify`."""

    training: bool

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def classify(self, features: torch.Tensor) -> torch.Tensor: ...

    def train(self, mode: bool = True) -> object: ...

    def eval(self) -> object: ...


def gradcam_maps(model: Explainable, images: np.ndarray, size: int | None = None) -> np.ndarray:
    """Grad-CAM maps [N, size, size] float32 in [0, 1] of `model` on `images` for its top class.

    `model` must expose `features(x) -> A` and `classify(A) -> logits`. `size` defaults to the
    image side (the paper resizes to the input size so maps of different models compare).
    """
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))
    size = size or int(x.shape[-1])
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            acts = model.features(x).detach().requires_grad_(True)
            logits = model.classify(acts)
            top = logits.argmax(dim=1)
            (grads,) = torch.autograd.grad(logits.gather(1, top[:, None]).sum(), acts)
    finally:
        model.train(was_training)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu(1.0 + (alpha * acts.detach()).sum(dim=1))
    lo = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - lo
    cam = torch.where(span > 0, (cam - lo) / span.clamp_min(1e-12), torch.ones_like(cam))
    cam = F.interpolate(cam[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return cam.numpy().astype(np.float32)


def transferability(student_maps: np.ndarray, teacher_maps: np.ndarray) -> float:
    """T = N / sum_x s(x), s(x) = 0.5 + 0.5 cos(M_S(x), M_T(x)); 1 for identical maps, larger when they disagree."""
    s = np.asarray(student_maps, dtype=np.float64).reshape(len(student_maps), -1)
    t = np.asarray(teacher_maps, dtype=np.float64).reshape(len(teacher_maps), -1)
    if s.shape != t.shape or len(s) == 0:
        raise ValueError(f"need equal, non-empty map stacks; got {s.shape} and {t.shape}")
    cos = np.einsum("ij,ij->i", s, t) / np.sqrt(np.einsum("ij,ij->i", s, s) * np.einsum("ij,ij->i", t, t))
    similarity = 0.5 + 0.5 * np.clip(cos, -1.0, 1.0)
    return float(len(s) / similarity.sum())


def selection_probabilities(scores: Sequence[float]) -> np.ndarray:
    """p = softmax(minmax(2 - T)): lower transferability score (more similar saliency) -> more likely."""
    v = 2.0 - np.asarray(scores, dtype=np.float64)
    span = v.max() - v.min()
    v = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    e = np.exp(v - v.max())
    return e / e.sum()


def draw_cohort(names: Sequence[str], probabilities: np.ndarray, k: int, rng: np.random.Generator) -> list[str]:
    """k distinct names, drawn one after another with probability proportional to `probabilities`."""
    p = np.asarray(probabilities, dtype=np.float64)
    if len(p) != len(names) or not 0 < k <= len(names):
        raise ValueError(f"cannot draw {k} of {len(names)} names with {len(p)} probabilities")
    picked = rng.choice(len(names), size=k, replace=False, p=p / p.sum())
    return [names[i] for i in picked]


def inclusion_probabilities(probabilities: np.ndarray, k: int, draws: int = 4000) -> np.ndarray:
    """Each name's chance of being among the k that `draw_cohort` picks (a node with a small draw weight can still fill
    a cohort's last place). Estimated from `draws` seeded Gumbel-top-k draws, which pick k distinct items one after
    another with the same probabilities; no closed form exists for unequal weights."""
    p = np.asarray(probabilities, dtype=np.float64)
    if k >= len(p):
        return np.ones(len(p))
    with np.errstate(divide="ignore"):
        keys = np.log(p / p.sum()) + np.random.default_rng(0).gumbel(size=(draws, len(p)))
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    return np.bincount(top.ravel(), minlength=len(p)) / draws
