"""`python -m bench.secagg`: the quick grid reports the fields issue 3 asks for; every setting is deterministic and completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import secagg as bench
from fedsa_secure.crypto import prg
from fedsa_secure.secagg.graph import neighbours, ring_order

ROOT = Path(__file__).resolve().parents[2]


def test_quick_grid_reports_every_field() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FEDSA_FLOWER_PYTHON"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.secagg", "--json", "--quick", "--flower-settings", "headline"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["n"], r["k"], r["dropped"], r["m"]) for r in rows] == [(5, 4, 1, 1000), (6, 3, 1, 1000)]
    for row in rows:
        assert row["upload_bytes"] == -(-row["m"] * row["b"] // 8) <= row["upload_bound_bytes"]
        assert row["mask_efficiency"] > 0 and row["server_unmask_s"] > 0 and row["keystream_s"] >= 0
        assert "flower_server_unmask_s" not in row  # no Flower environment given


class _CountingStream:
    """Wraps a PRG stream and counts the keystream bytes it produces."""

    produced = 0

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def update_into(self, data: bytes, buffer: bytearray) -> int:
        _CountingStream.produced += len(data)
        return self._inner.update_into(data, buffer)  # type: ignore[attr-defined]


def test_keystream_baseline_expands_exactly_the_bytes_masking_expands(monkeypatch: pytest.MonkeyPatch) -> None:
    m, names = 1000, tuple(f"node{i}" for i in range(5))
    config = bench.RoundConfig(
        round=1, participants=names, threshold=3, vector_length=m,
        quantization=bench.QuantizationSpec(bench.CLIP, bench.LEVEL_BITS),
        modulus_bits=bench.required_modulus_bits(5, bench.LEVEL_BITS), nonce=bytes(32),
    )
    server = bench.SecAggServer(config)
    clients = [bench.SecAggClient(name, config) for name in names]
    for client in clients:
        server.receive_advertise(client.advertise())
    roster = server.roster()
    for client in clients:
        server.receive_shares(client.share_keys(roster))
    client = clients[0]
    delivery = server.deliveries()[client.name]
    original = prg._stream
    monkeypatch.setattr(prg, "_stream", lambda seed: _CountingStream(original(seed)))
    _CountingStream.produced = 0
    client.masked_input(delivery, np.zeros(m))
    masking = _CountingStream.produced
    _CountingStream.produced = 0
    bench.expand_keystreams([bytes(32)] * bench.mask_streams(client), m)
    assert masking == _CountingStream.produced == 4 * m * 6  # self, 4 pairwise, rounding


def _plus_config(n: int, k: int) -> bench.RoundConfig:
    return bench.RoundConfig(
        round=1, participants=tuple(f"node{i:03d}" for i in range(n)), threshold=bench.threshold(k), vector_length=8,
        quantization=bench.QuantizationSpec(bench.CLIP, bench.LEVEL_BITS),
        modulus_bits=bench.required_modulus_bits(n, bench.LEVEL_BITS), nonce=bytes(32), degree=k,
    )


def _keeps_t(graph: dict[str, frozenset[str]], gone: frozenset[str], t: int) -> bool:
    return all(len((peers | {node}) - gone) >= t for node, peers in graph.items())


def test_dropped_nodes_keep_t_in_every_neighbourhood_and_sit_where_the_seed_says() -> None:
    """n=12, k=5, t=4: whatever the session (graph), the same seed drops the same ring positions,
    and no neighbourhood (a node and its 5 neighbours) loses more than k+1-t = 2 members."""
    config = _plus_config(12, 5)
    t = config.threshold
    assert t == 4
    positions, rings = set(), set()
    for session in (b"one", b"two", b"three"):
        ring, graph = ring_order(config, session), neighbours(config, session)
        for position, name in enumerate(ring):  # the graph joins ring distances 1, 2 and 6 (antipode)
            assert graph[name] == {ring[(position + offset) % 12] for offset in (1, 2, 6, 10, 11)}
        for dropped in (3, 4):
            gone = bench.choose_dropped(ring, graph, t, dropped, np.random.default_rng(7))
            assert len(gone) == dropped and _keeps_t(graph, gone, t)
            positions.add((dropped, tuple(sorted(ring.index(name) for name in gone))))
        rings.add(ring)
    assert len(rings) == 3 and len(positions) == 2  # three graphs, one pattern per dropped count
    # Plain uniform draws, as the bench made before, mostly leave some neighbourhood below t.
    rng = np.random.default_rng(0)
    valid = [
        _keeps_t(graph, frozenset(ring[i] for i in rng.choice(12, size=4, replace=False)), t) for _ in range(200)
    ]
    assert sum(valid) < 20
    with pytest.raises(ValueError, match="fewer than t=4"):
        bench.choose_dropped(ring, graph, t, 9, rng)


@pytest.mark.parametrize("dropped", [3, 4])
def test_small_setting_completes_for_every_seed(dropped: int) -> None:
    """run_setting(12, 5, dropped, 40) for eight seeds: the round never aborts, and run_setting's
    own check (all non-dropped nodes survive, the sum is right) passes."""
    for seed in range(8):
        row = bench.run_setting(12, 5, dropped, 40, seed)
        assert (row["n"], row["k"], row["t"], row["dropped"], row["m"]) == (12, 5, 4, dropped, 40)
        assert row["upload_bytes"] == -(-40 * row["b"] // 8)
        assert row["server_unmask_s"] > 0


def test_bench_nonce_is_fixed_by_the_seed() -> None:
    assert bench.bench_nonce(3) == bench.bench_nonce(3) != bench.bench_nonce(4)
    assert len(bench.bench_nonce(0)) == 32


def test_sum_check_refuses_a_wrong_sum_or_survivor_set() -> None:
    vector = np.linspace(-bench.CLIP, bench.CLIP, 5)
    bench._check_sum(2 * vector, vector, ("a", "b"), frozenset({"a", "b"}))  # noqa: SLF001
    with pytest.raises(RuntimeError, match="sum error"):
        bench._check_sum(2 * vector + 0.01, vector, ("a", "b"), frozenset({"a", "b"}))  # noqa: SLF001
    with pytest.raises(RuntimeError, match="1 survivors"):
        bench._check_sum(vector, vector, ("a",), frozenset({"a", "b"}))  # noqa: SLF001
