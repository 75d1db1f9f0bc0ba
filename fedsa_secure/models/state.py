"""Backbone parameters as named float32 arrays and flat vectors: the unit that leaves a node."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

BACKBONE = "features"


def backbone_state(model: nn.Module) -> dict[str, np.ndarray]:
    """Float32 copies of the backbone (`model.features`) parameters, keyed `features.<name>`, sorted."""
    params = dict(getattr(model, BACKBONE).named_parameters())
    return {
        f"{BACKBONE}.{name}": params[name].detach().cpu().numpy().astype(np.float32, copy=True)
        for name in sorted(params)
    }


def load_backbone_state(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Overwrite the backbone parameters in place; names and shapes must match exactly."""
    params = {f"{BACKBONE}.{n}": p for n, p in getattr(model, BACKBONE).named_parameters()}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise ValueError(f"backbone state does not match the model: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, param in params.items():
            value = np.asarray(state[name])
            if value.shape != tuple(param.shape):
                raise ValueError(f"{name}: shape {value.shape} != model shape {tuple(param.shape)}")
            param.copy_(torch.from_numpy(value.astype(np.float32)))


def flatten_state(state: dict[str, np.ndarray]) -> np.ndarray:
    """One float32 vector, parameters concatenated in sorted-name order."""
    return np.concatenate([np.asarray(state[k], dtype=np.float32).ravel() for k in sorted(state)])


def unflatten_like(vector: np.ndarray, template_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of `flatten_state` for a state with the template's names and shapes."""
    vector = np.asarray(vector, dtype=np.float32)
    total = sum(int(np.prod(v.shape)) for v in template_state.values())
    if vector.shape != (total,):
        raise ValueError(f"vector has shape {vector.shape}, template needs ({total},)")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name in sorted(template_state):
        shape = template_state[name].shape
        size = int(np.prod(shape))
        out[name] = vector[offset : offset + size].reshape(shape).copy()
        offset += size
    return out
