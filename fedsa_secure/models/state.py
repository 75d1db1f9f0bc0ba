"""Backbone (optionally plus head) parameters as named float32 arrays and flat vectors: the unit that leaves a node."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedsa_secure.crypto import sha256

BACKBONE = "features"


def backbone_state(model: nn.Module, parts: tuple[str, ...] = (BACKBONE,)) -> dict[str, np.ndarray]:
    """Float32 copies of the parameters of `model`'s `parts` (default: the backbone), keyed `<part>.<name>`, sorted."""
    return {
        name: param.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, param in sorted(_named_parameters(model, parts).items())
    }


def load_backbone_state(model: nn.Module, state: dict[str, np.ndarray], parts: tuple[str, ...] = (BACKBONE,)) -> None:
    """Overwrite the parameters of `model`'s `parts` in place; names and shapes must match exactly."""
    params = _named_parameters(model, parts)
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise ValueError(f"backbone state does not match the model: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, param in params.items():
            value = np.asarray(state[name])
            if value.shape != tuple(param.shape):
                raise ValueError(f"{name}: shape {value.shape} != model shape {tuple(param.shape)}")
            param.copy_(torch.from_numpy(value.astype(np.float32)))


def _named_parameters(model: nn.Module, parts: tuple[str, ...]) -> dict[str, nn.Parameter]:
    return {f"{part}.{n}": p for part in parts for n, p in getattr(model, part).named_parameters()}


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


def state_digest(state: Mapping[str, np.ndarray | torch.Tensor]) -> bytes:
    """SHA-256 of named arrays: each name, dtype, shape and little-endian bytes, in sorted-name order.

    What a round binds into its session as the model every input starts from, and what a
    ledger records of the DP teacher it charged.
    """
    parts = [b"fedsa-secure/v1/state"]
    for name in sorted(state):
        value = state[name]
        array = np.ascontiguousarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        header = json.dumps([name, little.dtype.str, list(array.shape)]).encode()
        parts += [len(header).to_bytes(8, "big"), header, little.nbytes.to_bytes(8, "big"), little.tobytes()]
    return sha256(b"".join(parts))
