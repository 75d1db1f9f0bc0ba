"""A party's own labelled records from an `.npz` file (a node's records, the student owner's probe and test sets),
checked before anything is trained on them."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fedsa_secure.checks import MAX_CLASSES
from fedsa_secure.data.digits import LabelledSet, NodeData
from fedsa_secure.data.federations import federation
from fedsa_secure.data.tasks import OWN_TASK
from fedsa_secure.errors import ConfigError

MIN_RECORDS = 10  # fewer cannot train a teacher, and DP-SGD's noise would swamp every step


def load_records(path: Path, name: str) -> NodeData:
    """Node `name`'s records: `load_labelled` of `path`, labelled for the node's own task (they train its DP teacher
    and never leave the node)."""
    return NodeData(name, OWN_TASK, load_labelled(path, "records"))


def configured_records(name: str, records: Path | None, dataset: str, seed: int) -> NodeData:
    """A node's records as its config's [data] names them: its own file if given, else its share of a built-in dataset."""
    return load_records(records, name) if records is not None else federation(dataset).node(name, seed)


def load_labelled(path: Path, what: str) -> LabelledSet:
    """The `what` file `path`: an array `x` of float images [N, 1, H, W] (or [N, H, W]) and `y` of labels 0..K-1.

    K is the largest label plus one. Pickled arrays are refused. ConfigError naming the file and
    what was expected for anything else: a missing array, a wrong dtype or shape, NaN or infinity,
    labels below 0 or of one class only, fewer than MIN_RECORDS records.
    """
    where = f"{what} file {path}"
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in ("x", "y") if key not in arrays.files]
            if missing:
                raise ConfigError(f"{where} has no array {' or '.join(map(repr, missing))}; it holds {sorted(arrays.files)}. "
                                  "Save it with numpy.savez(path, x=records, y=labels)")
            x, y = arrays["x"], arrays["y"]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ConfigError(f"cannot read the {where}: {error}. Give an .npz written by numpy.savez with arrays x and y "
                          "(no object arrays)") from None
    images, labels = _images(x, where), _labels(y, len(x), where)
    return LabelledSet(images, labels, int(labels.max()) + 1)


def _images(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype.kind != "f" or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[1] != 1):
        raise ConfigError(f"{where}: x must be float images [N, 1, H, W] or [N, H, W] (one grey channel), "
                          f"got {x.dtype} {list(x.shape)}")
    if len(x) < MIN_RECORDS:
        raise ConfigError(f"{where}: x holds {len(x)} records; a node needs at least {MIN_RECORDS}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise ConfigError(f"{where}: x holds NaN or infinite values in {bad} record(s); clean or drop them")
    x = x if x.ndim == 4 else x[:, None]
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray, count: int, where: str) -> np.ndarray:
    if y.dtype.kind not in "iu" or y.shape != (count,):
        raise ConfigError(f"{where}: y must hold one integer label per record ({count}), got {y.dtype} {list(y.shape)}")
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        raise ConfigError(f"{where}: labels must lie in 0..{MAX_CLASSES - 1}, got {y.min()} to {y.max()}")
    if len(np.unique(y)) < 2:
        raise ConfigError(f"{where}: every label is {y[0]}; a teacher needs records of at least two classes")
    return y.astype(np.int64)
