"""Plain (non-DP) supervised training, shared by teacher training and task adaptation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def fit_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
) -> nn.Module:
    """Train `model` in place with Adam + cross-entropy on shuffled mini-batches; deterministic in `seed`."""
    xt, yt = torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(yt), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def correct(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per record of (x, y): did `model`'s top-1 prediction hit the label (bool array)."""
    model.eval()
    pred = model(torch.from_numpy(np.asarray(x, dtype=np.float32))).argmax(dim=1).numpy()
    return pred == np.asarray(y)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of `model` on (x, y)."""
    return float(correct(model, x, y).mean())
