"""SecAgg+ neighbour graph and the (k, t) parameter helper."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedsa_secure.errors import ConfigError, ProtocolError
from fedsa_secure.secagg.graph import check_degree, neighbours
from fedsa_secure.secagg.messages import QuantizationSpec, RoundConfig
from fedsa_secure.secagg.parameters import graph_parameters


def _config(n: int, k: int) -> RoundConfig:
    names = tuple(f"n{i:03d}" for i in range(n))
    return RoundConfig(0, names, n, 4, QuantizationSpec(1.0, 4), 16, bytes(32), degree=k)


@pytest.mark.parametrize(("n", "k"), [(2, 1), (7, 2), (8, 3), (12, 5), (13, 6), (50, 11), (9, 8), (10, 0)])
def test_graph_is_k_regular_symmetric_and_loop_free(n: int, k: int) -> None:
    config = _config(n, k)
    graph = neighbours(config, b"session")
    degree = k or n - 1
    assert set(graph) == set(config.participants)
    for node, peers in graph.items():
        assert len(peers) == degree and node not in peers
        assert all(node in graph[peer] for peer in peers)


def test_graph_depends_on_session_only() -> None:
    config = _config(40, 6)
    assert neighbours(config, b"a") == neighbours(replace(config, round=9), b"a")
    assert neighbours(config, b"a") != neighbours(config, b"b")


def test_graph_is_not_the_plain_ring_order() -> None:
    graph = neighbours(_config(40, 2), b"session")
    ring_pairs = sum(f"n{i + 1:03d}" in graph[f"n{i:03d}"] for i in range(39))
    assert ring_pairs < 10  # a shuffled ring keeps ~2 of 39 adjacent pairs


@pytest.mark.parametrize(("n", "k", "match"), [(7, 3, "even n"), (5, 5, "1..4"), (5, -1, "1..4")])
def test_degree_refused(n: int, k: int, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        check_degree(_config(n, k))


@pytest.mark.parametrize("n", [10, 50, 200, 1000])
@pytest.mark.parametrize(("dropout", "corrupt"), [(0.05, 0.0), (0.1, 0.1), (0.2, 0.3)])
def test_graph_parameters_are_feasible(n: int, dropout: float, corrupt: float) -> None:
    k, t = graph_parameters(n, dropout, corrupt)
    assert 1 <= k <= n - 1 and (k + 1) / 2 < t <= k + 1
    assert not (k % 2 and n % 2)
    assert t > corrupt * n * (k + 1) / n  # more than the expected number of corrupt holders


def test_graph_parameters_grow_slowly_with_n() -> None:
    k_small, _ = graph_parameters(200, 0.1, 0.1)
    k_large, _ = graph_parameters(5000, 0.1, 0.1)
    assert k_small < 200 - 1 and k_large < 200  # logarithmic, far below n
    assert graph_parameters(10, 0.1, 0.1)[0] < 10


def test_graph_parameters_refuse_infeasible_requests() -> None:
    with pytest.raises(ConfigError):
        graph_parameters(100, 0.4, 0.2)
    with pytest.raises(ConfigError):
        graph_parameters(1, 0.1, 0.1)
