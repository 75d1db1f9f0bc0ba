"""MNIST-1D: digit-like 1-D signals generated offline by the `mnist1d` package (`make_dataset()`,
never its downloading `get_dataset()`).

It is the data regime where the nodes hold far more records than the aggregator: the two
class-subset teachers hold 3,000 records each and every other node 1,000, while the aggregator
labels the same few records per class as on MNIST-5k (4 at the 1% budget). Each 40-sample signal
x becomes the 14 x 14 image H[i, j] = x[2i + j] (a strided Hankel matrix, which uses every sample
once on its first row and column): the product's models are 2-D, and a sliding window of the
signal keeps its local structure in both axes. Signals are standardised by the generator and
mapped from [-4, 4] onto [0, 1].
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np

from fedsa_secure.data.digits import LabelledSet, NodeData
from fedsa_secure.data.mnist5k import MNIST_NODES, ReserveSplit, hold_out, probe_per_class, subset_heavy_nodes
from fedsa_secure.data.tasks import NUM_DIGITS, TASK_CLASSES, task_labels
from fedsa_secure.errors import ConfigError

N_RECORDS = 12_000  # 1,200 per digit
SUBSET_RECORDS = 3000  # for each class-subset teacher (digits 0-4, digits 5-9)...
OTHER_RECORDS = 1000  # ...and for each other node
GENERATOR_SEED = 42  # mnist1d's own default: one fixed dataset; the split seed shuffles it
SIDE = 14
_SIGNAL_RANGE = 4.0  # standardised signals rarely leave [-4, 4]; the rest is clipped


def hankel_images(signals: np.ndarray) -> np.ndarray:
    """[N, 40] signals -> [N, 1, 14, 14] images with H[i, j] = x[2i + j], values in [0, 1]."""
    rows, cols = np.arange(SIDE)[:, None], np.arange(SIDE)[None, :]
    index = 2 * rows + cols
    if signals.ndim != 2 or signals.shape[1] <= int(index.max()):
        raise ValueError(f"hankel_images needs [N, >= {int(index.max()) + 1}] signals, got {signals.shape}")
    scaled = np.clip((signals + _SIGNAL_RANGE) / (2 * _SIGNAL_RANGE), 0.0, 1.0)
    return np.ascontiguousarray(scaled[:, index][:, None], dtype=np.float32)


@lru_cache(maxsize=1)
def load_mnist1d() -> tuple[np.ndarray, np.ndarray]:
    """(images [12000, 1, 14, 14] float32 in [0, 1], digits [12000] int64), generated offline.

    `make_dataset` reseeds Python's and numpy's global generators; their states are restored so
    that loading data does not change any other random draw in the process.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = N_RECORDS, GENERATOR_SEED
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    signals = np.concatenate([data["x"], data["x_test"]])
    digits = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return hankel_images(signals), digits


@lru_cache(maxsize=8)
def _split(seed: int) -> ReserveSplit:
    """Record indices per party; every record goes to at most one party."""
    _, digits = load_mnist1d()
    test, reserve, pool = hold_out(digits, seed)
    return ReserveSplit(test=test, reserve=reserve, nodes=subset_heavy_nodes(pool, digits, SUBSET_RECORDS, OTHER_RECORDS))


def mnist1d_aggregator_data(seed: int, probe_budget: float = 0.01) -> tuple[LabelledSet, LabelledSet]:
    """The student owner's (probe, test) sets: the same labels per class per budget as MNIST-5k."""
    x, digits = load_mnist1d()
    split = _split(seed)
    probe = split.reserve[:, : probe_per_class(probe_budget)].ravel()
    return LabelledSet(x[probe], digits[probe], NUM_DIGITS), LabelledSet(x[split.test], digits[split.test], NUM_DIGITS)


def mnist1d_node_data(name: str, seed: int) -> NodeData:
    """One node's private shard with its task's labels; unknown names are a config error."""
    if name not in MNIST_NODES:
        raise ConfigError(f"unknown node name {name!r}; allowed names: {', '.join(MNIST_NODES)}")
    x, digits = load_mnist1d()
    idx = _split(seed).nodes[name]
    task = MNIST_NODES[name]
    labels = task_labels(task, digits[idx], [seed, int(name.rsplit("-", 1)[1])])
    return NodeData(name, task, LabelledSet(x[idx], labels, TASK_CLASSES[task]))
