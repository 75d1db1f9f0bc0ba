"""Checks on arrays another party sent, before anything is computed on them.

A bad array is refused with a ProtocolError that names it and says what was expected; nothing
downstream (a convolution, an SVD, a quantizer) ever sees an empty, oversized or non-finite one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsa_secure.errors import ProtocolError

MAX_PROBE_RECORDS = 10_000  # more than any probe set; a larger request is refused, not computed
MAX_MAP_SIDE = 256
MAX_CLASSES = 1_000  # target labels a probe may have


def check_records(images: np.ndarray, record_shape: tuple[int, ...], what: str) -> np.ndarray:
    """Between 1 and MAX_PROBE_RECORDS finite float records of `record_shape`, as a fresh C-ordered float32 copy: torch
    picks its kernels by strides (a size-1 channel's stride can read as channels-last), so the node computes the same
    whether the array came over the wire or in memory."""
    if images.dtype.kind != "f" or images.shape[1:] != tuple(record_shape):
        raise ProtocolError(
            f"{what}: expected float records of shape {list(record_shape)}, got {images.dtype} {list(images.shape)}; "
            "is the aggregator running on other data than this node?"
        )
    if not 1 <= len(images) <= MAX_PROBE_RECORDS:
        raise ProtocolError(f"{what}: expected 1 to {MAX_PROBE_RECORDS} records, got {len(images)}")
    if not np.isfinite(images).all():
        raise ProtocolError(f"{what}: contains NaN or infinite values")
    return np.array(images, dtype=np.float32, order="C")


def check_labels(labels: np.ndarray, count: int, num_classes: int, what: str) -> np.ndarray:
    """`count` integer labels in range(num_classes), 2 <= num_classes <= MAX_CLASSES, at least two of them distinct."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ProtocolError(f"{what}: num_classes must lie between 2 and {MAX_CLASSES}, got {num_classes}")
    if labels.dtype.kind not in "iu" or labels.shape != (count,):
        raise ProtocolError(f"{what}: expected {count} integer labels (one per record), got {labels.dtype} {list(labels.shape)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ProtocolError(f"{what}: labels must lie in range({num_classes}), got {labels.min()} to {labels.max()}")
    if len(np.unique(labels)) < 2:
        raise ProtocolError(f"{what}: needs records of at least two classes")
    return labels.astype(np.int64, copy=False)


def check_maps(maps: np.ndarray, count: int, what: str) -> np.ndarray:
    """`count` finite square maps [count, s, s] with 1 <= s <= MAX_MAP_SIDE."""
    if maps.ndim != 3 or len(maps) != count or maps.shape[1] != maps.shape[2] or not 1 <= maps.shape[1] <= MAX_MAP_SIDE:
        raise ProtocolError(f"{what}: expected {count} square maps of side 1 to {MAX_MAP_SIDE}, got {list(maps.shape)}")
    if maps.dtype.kind != "f" or not np.isfinite(maps).all():
        raise ProtocolError(f"{what}: expected finite float maps, got {maps.dtype} with NaN or infinite values")
    return maps.astype(np.float32, copy=False)


def check_state(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Exactly the expected parameter names and shapes, every value a finite float."""
    shapes = {name: tuple(array.shape) for name, array in state.items()}
    if shapes != dict(expected):
        missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
        differ = sorted(n for n in set(shapes) & set(expected) if shapes[n] != tuple(expected[n]))
        raise ProtocolError(f"{what}: missing {missing}, unexpected {extra}, shapes differ for {differ}")
    for name, array in state.items():
        if array.dtype.kind != "f" or not np.isfinite(array).all():
            raise ProtocolError(f"{what}: parameter {name!r} is not a finite float array")
