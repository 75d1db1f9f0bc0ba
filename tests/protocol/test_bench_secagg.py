"""`python -m bench.secagg --json --quick` runs and reports the fields issue 3 asks for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
