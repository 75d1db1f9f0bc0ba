"""A node's private teacher: trained once at start-up on the node's own labelled records, then frozen."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from fedsa_secure.data import NodeData, task_input
from fedsa_secure.fedsa.supervised import fit_classifier
from fedsa_secure.models import ConvNet, make_teacher

TEACHER_EPOCHS = 12
TEACHER_LR = 3e-3
TEACHER_BATCH = 32
_CACHE_FORMAT = 2  # 2: spatial (flattened 4x4) heads


def train_teacher(node: NodeData, seed: int) -> ConvNet:
    """Non-DP training: the teacher never leaves the node, only DP proxy updates do."""
    model = make_teacher(node.train.num_classes, seed)
    fit_classifier(
        model,
        task_input(node.task, node.train.x),
        node.train.y,
        epochs=TEACHER_EPOCHS,
        lr=TEACHER_LR,
        batch_size=TEACHER_BATCH,
        seed=seed,
    )
    return _freeze(model)


def load_or_train_teacher(node: NodeData, cache: Path, seed: int) -> ConvNet:
    """Load the teacher cached at file `cache` if it matches (node, task, seed); otherwise train and cache it.

    An unreadable or mismatched cache file is not an error: the teacher is retrained and the file replaced.
    """
    cache = Path(cache)
    key = {
        "format": _CACHE_FORMAT,
        "node": node.name,
        "task": node.task,
        "seed": seed,
        "shape": list(node.train.x.shape),  # tells datasets apart (digits and MNIST-5k use the same node names)
    }
    model = _load(cache, key, node.train.num_classes, seed)
    if model is not None:
        return model
    model = train_teacher(node, seed)
    _save_atomic(cache, {**key, "state_dict": model.state_dict()})
    return model


def _load(cache: Path, key: dict, num_classes: int, seed: int) -> ConvNet | None:
    try:
        blob = torch.load(cache, weights_only=True)
        if any(blob.get(k) != v for k, v in key.items()):
            return None
        model = make_teacher(num_classes, seed)
        model.load_state_dict(blob["state_dict"])
    except Exception:  # missing, truncated, corrupt or from another architecture: retrain
        return None
    return _freeze(model)


def _save_atomic(cache: Path, blob: dict) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=cache.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
        os.replace(tmp, cache)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _freeze(model: nn.Module) -> ConvNet:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
