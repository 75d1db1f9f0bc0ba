"""The datasets a simulation can run on, behind one interface: node names/tasks, aggregator sets, node shards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedsa_secure.data.digits import DEMO_NODES, LabelledSet, NodeData, aggregator_data, node_data
from fedsa_secure.data.mnist1d import mnist1d_aggregator_data, mnist1d_node_data
from fedsa_secure.data.mnist5k import MNIST_NODES, PROBE_BUDGETS, mnist_aggregator_data, mnist_node_data
from fedsa_secure.errors import ConfigError


@dataclass(frozen=True)
class Federation:
    """`aggregator(seed, probe_budget)` -> (probe, test); `node(name, seed)` -> that node's private data.

    `probe_budgets`: the budgets an experiment sweeps; empty for a fixed probe (pass no budget).
    """

    name: str
    nodes: dict[str, str]
    aggregator: Callable[[int, float | None], tuple[LabelledSet, LabelledSet]]
    node: Callable[[str, int], NodeData]
    probe_budgets: tuple[float, ...] = ()


def _digits_aggregator(seed: int, probe_budget: float | None) -> tuple[LabelledSet, LabelledSet]:
    if probe_budget is not None:
        raise ConfigError("the digits federation has a fixed probe of 5 labels per class; pass no budget")
    return aggregator_data(seed)


def _mnist_aggregator(seed: int, probe_budget: float | None) -> tuple[LabelledSet, LabelledSet]:
    return mnist_aggregator_data(seed, 0.01 if probe_budget is None else probe_budget)


def _mnist1d_aggregator(seed: int, probe_budget: float | None) -> tuple[LabelledSet, LabelledSet]:
    return mnist1d_aggregator_data(seed, 0.01 if probe_budget is None else probe_budget)


def _skewed_node(name: str, seed: int) -> NodeData:
    return mnist_node_data(name, seed, skew=True)


FEDERATIONS: dict[str, Federation] = {
    "digits": Federation("digits", DEMO_NODES, _digits_aggregator, node_data),
    "mnist5k": Federation("mnist5k", MNIST_NODES, _mnist_aggregator, mnist_node_data, PROBE_BUDGETS),
    "mnist5k-skew": Federation("mnist5k-skew", MNIST_NODES, _mnist_aggregator, _skewed_node, PROBE_BUDGETS),
    "mnist1d": Federation("mnist1d", MNIST_NODES, _mnist1d_aggregator, mnist1d_node_data, PROBE_BUDGETS),
}


def federation(name: str) -> Federation:
    """The named federation; unknown names are a config error."""
    if name not in FEDERATIONS:
        raise ConfigError(f"unknown dataset {name!r}; allowed: {', '.join(FEDERATIONS)}")
    return FEDERATIONS[name]
