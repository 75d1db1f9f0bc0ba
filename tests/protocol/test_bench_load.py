"""bench.load runs full secure rounds over gRPC with mutual TLS and measures the aggregator; a small size here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow  # two aggregator processes, each training its Scratch baseline
def test_the_load_benchmark_measures_the_aggregator_side_by_side() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.load", "--json", "--nodes", "3", "6", "--rounds", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    small, large = document["sizes"]
    for size, count in ((small, 3), (large, 6)):
        assert size["nodes"] == size["joined"] == count and size["survivors"] == [count]  # every node's update summed
        assert size["peak_rss_mb"] >= size["rss_before_nodes_mb"] > 0 and size["aggregator_cpu_seconds"] > 0
    growth = document["growth_from_smallest_to_largest"]
    assert growth["nodes"] == 2.0
    assert large["peak_threads"] <= small["peak_threads"] + 2  # held polls are coroutines: no thread per node
