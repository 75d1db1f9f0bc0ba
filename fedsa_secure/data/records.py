"""A party's own labelled records (a node's records, the student owner's probe and test sets), from an `.npz` file
or the party's own code (`module:function`), checked before anything is trained on them."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fedsa_secure.checks import MAX_CLASSES
from fedsa_secure.config import NodeConfig
from fedsa_secure.data.digits import LabelledSet, NodeData
from fedsa_secure.data.federations import federation
from fedsa_secure.data.tasks import OWN_TASK
from fedsa_secure.entry_points import EntryPoint
from fedsa_secure.errors import ConfigError

MIN_RECORDS = 10  # fewer cannot train a teacher, and DP-SGD's noise would swamp every step
UNLABELLED = 0  # LabelledSet.num_classes of records without labels: a teacher file labels them (fedsa.teacher)
Source = Path | EntryPoint


def load_records(source: Source, name: str, *, labelled_by_teacher: bool = False) -> NodeData:
    """Node `name`'s records, labelled for the node's own task (they train its DP teacher and never leave the node).

    `labelled_by_teacher`: the node has a teacher file, so labels are optional (num_classes UNLABELLED without).
    """
    return NodeData(name, OWN_TASK, _read(source, "records", name, labels_required=not labelled_by_teacher))


def configured_records(config: NodeConfig) -> NodeData:
    """A node's records as its config's [data] names them: its own if given (labels optional with a teacher file), else
    its share of a built-in dataset."""
    name, data = config.node.name, config.data
    if data.records is None:
        return federation(data.dataset).node(name, data.seed)
    return load_records(data.records, name, labelled_by_teacher=config.teacher.file is not None)


def load_labelled(source: Source, what: str) -> LabelledSet:
    """The student owner's `what` set (probe or test): records and their labels, both required."""
    return _read(source, what, what, labels_required=True)


def _read(source: Source, what: str, argument: str, *, labels_required: bool) -> LabelledSet:
    """Records x (float, one per row: vectors [N, D], grey images [N, 1, H, W] or [N, H, W]) and labels y (0..K-1).

    K is the largest label plus one. From an .npz (pickled arrays refused) or from `module:function(argument)`
    returning (x, y), x alone, a dict with x and y, or a torch Dataset of (x, y) pairs. ConfigError naming the
    source and what was expected for anything else: a missing array, a wrong dtype or shape, NaN or infinity,
    labels below 0 or of one class only, fewer than MIN_RECORDS records.
    """
    if isinstance(source, EntryPoint):
        where = f"{what} from {source.spec}({argument!r})"
        try:
            returned = source.load(what)(argument)
        except ConfigError:
            raise
        except Exception as error:  # whatever the party's own code raises
            raise ConfigError(f"{where} failed: {type(error).__name__}: {error}") from None
        x, y = _arrays(returned, where)
    else:
        where = f"{what} file {source}"
        x, y = _npz(source, where)
    records = _records(x, where)
    if y is None:
        if labels_required:
            raise ConfigError(f"{where} has no labels y: give one integer label per record (only a node with a teacher "
                              "file may leave them out; its teacher's predictions then label them)")
        return LabelledSet(records, np.zeros(len(records), np.int64), UNLABELLED)
    labels = _labels(y, len(records), where)
    return LabelledSet(records, labels, int(labels.max()) + 1)


def _npz(path: Path, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays.files:
                raise ConfigError(f"{where} has no array 'x'; it holds {sorted(arrays.files)}. "
                                  "Save it with numpy.savez(path, x=records, y=labels)")
            return arrays["x"], (arrays["y"] if "y" in arrays.files else None)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ConfigError(f"cannot read the {where}: {error}. Give an .npz written by numpy.savez with arrays x and y "
                          "(no object arrays)") from None


def _arrays(returned: Any, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """What a loader function returned, as numpy arrays."""
    if isinstance(returned, dict):
        returned = (returned.get("x"), returned.get("y"))
    elif hasattr(returned, "__getitem__") and hasattr(returned, "__len__") and not isinstance(returned, (tuple, np.ndarray)):
        pairs = [returned[i] for i in range(len(returned))]  # a torch Dataset of (x, y)
        if not pairs or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise ConfigError(f"{where}: a dataset must hold (x, y) pairs")
        returned = (np.stack([_numpy(p[0]) for p in pairs]), np.array([int(p[1]) for p in pairs]))
    if isinstance(returned, tuple) and len(returned) == 2:
        x, y = returned
        return _numpy(x, where), (None if y is None else _numpy(y, where))
    if returned is not None and not isinstance(returned, tuple):
        return _numpy(returned, where), None
    raise ConfigError(f"{where} returned {type(returned).__name__}; return (x, y), x alone, {{'x': x, 'y': y}} or a "
                      "torch Dataset of (x, y) pairs")


def _numpy(value: Any, where: str = "") -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise ConfigError(f"{where}: records and labels must be numeric arrays, not Python objects")
    return array


def _records(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype.kind != "f" or x.ndim not in (2, 3, 4) or (x.ndim == 4 and x.shape[1] != 1):
        raise ConfigError(f"{where}: x must be float records: vectors [N, D], or images [N, 1, H, W] or [N, H, W] (one grey "
                          f"channel), got {x.dtype} {list(x.shape)}")
    if len(x) < MIN_RECORDS:
        raise ConfigError(f"{where}: x holds {len(x)} records; a party needs at least {MIN_RECORDS}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise ConfigError(f"{where}: x holds NaN or infinite values in {bad} record(s); clean or drop them")
    x = x[:, None] if x.ndim == 3 else x
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray, count: int, where: str) -> np.ndarray:
    if y.dtype.kind not in "iu" or y.shape != (count,):
        raise ConfigError(f"{where}: y must hold one integer label per record ({count}), got {y.dtype} {list(y.shape)}")
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        raise ConfigError(f"{where}: labels must lie in 0..{MAX_CLASSES - 1}, got {y.min()} to {y.max()}")
    if len(np.unique(y)) < 2:
        raise ConfigError(f"{where}: every label is {y[0]}; a teacher needs records of at least two classes")
    return y.astype(np.int64)
