"""The demo federation on scikit-learn's bundled 8x8 digits (no download at run time).

One deterministic split per seed: the aggregator's test and probe sets, and four disjoint
node shards whose teachers learn different tasks. Every process derives the same split from
the seed and keeps only its own part.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from sklearn.datasets import load_digits

from fedsa_secure.data.tasks import NUM_DIGITS, TASK_CLASSES, task_labels
from fedsa_secure.errors import ConfigError

TEST_FRACTION = 0.2

DEMO_NODES: dict[str, str] = {
    "node-1": "digits-0-4",
    "node-2": "digits-5-9",
    "node-3": "parity",
    "node-4": "unrelated",
}


@dataclass(frozen=True)
class LabelledSet:
    """Images [N, 1, S, S] float32 in [0, 1] and integer labels [N] in range(num_classes)."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class NodeData:
    """A node's private records, labelled for its teacher's task (labels never leave the node)."""

    name: str
    task: str
    train: LabelledSet


@dataclass(frozen=True)
class _Split:
    test: np.ndarray
    probe: np.ndarray
    nodes: dict[str, np.ndarray]


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, bunch.target.astype(np.int64)


@lru_cache(maxsize=8)
def _split(seed: int, probe_per_class: int) -> _Split:
    """Record indices per party; every record goes to exactly one party."""
    _, digits = _load()
    order = np.random.default_rng(seed).permutation(len(digits))
    n_test = int(round(TEST_FRACTION * len(digits)))
    test, rest = order[:n_test], order[n_test:]

    probe_mask = np.zeros(len(rest), dtype=bool)
    for c in range(NUM_DIGITS):
        probe_mask[np.flatnonzero(digits[rest] == c)[:probe_per_class]] = True
    probe, pool = rest[probe_mask], rest[~probe_mask]

    # Half the pool is drawn at random for the parity and unrelated nodes; the other half is
    # divided by digit, so node-1 and node-2 hold disjoint label ranges.
    quarter = len(pool) // 4
    half = pool[2 * quarter :]
    nodes = {
        "node-1": half[digits[half] < 5],
        "node-2": half[digits[half] >= 5],
        "node-3": pool[:quarter],
        "node-4": pool[quarter : 2 * quarter],
    }
    return _Split(test=test, probe=probe, nodes=nodes)


def aggregator_data(seed: int, probe_per_class: int = 5) -> tuple[LabelledSet, LabelledSet]:
    """The student owner's (probe, test) sets, labelled with the ten digits."""
    x, digits = _load()
    split = _split(seed, probe_per_class)
    probe = LabelledSet(x[split.probe], digits[split.probe], NUM_DIGITS)
    test = LabelledSet(x[split.test], digits[split.test], NUM_DIGITS)
    return probe, test


def node_data(name: str, seed: int, probe_per_class: int = 5) -> NodeData:
    """One node's private shard with its task's labels; unknown names are a config error."""
    if name not in DEMO_NODES:
        raise ConfigError(f"unknown node name {name!r}; allowed names: {', '.join(DEMO_NODES)}")
    x, digits = _load()
    idx = _split(seed, probe_per_class).nodes[name]
    task = DEMO_NODES[name]
    labels = task_labels(task, digits[idx], [seed, 4])
    return NodeData(name, task, LabelledSet(x[idx], labels, TASK_CLASSES[task]))
