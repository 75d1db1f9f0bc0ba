"""`python -m bench.secagg --json --quick` runs and reports the fields issue 3 asks for."""

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
