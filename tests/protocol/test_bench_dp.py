"""`python -m bench.dp --json` reports what issue 4 item 7 asks for: a ratio per mode, the default, the goal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_one_repeat_of_the_default_mode_reports_every_field() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.dp", "--json", "--repeats", "1", "--modes", "ew"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300,
    )
    result = json.loads(done.stdout)
    assert result["default_mode"] == "ew" and result["fastest_correct"] == "ew" and result["default_is_fastest_correct"]
    assert result["round"] == {"local_epochs": 2, "batch_size": 64, "optimizer": "sgd", "learning_rate": 0.1,
                               "momentum": 0.9}
    assert set(result["ratio"]) == set(result["wall_ratio"]) == {"ew"} and result["ratio"]["ew"] > 1
    assert result["default_ratio"] == result["ratio"]["ew"]
    assert result["meets_goal"] == (result["ratio"]["ew"] <= result["goal_ratio"] == 2.5)
    assert max(result["gradient_relative_error"]["ew"].values()) < 1e-4  # exact on both input layouts
    assert result["correct"]["ew"] and result["correct_on_channels_last_input"]["ew"]
    assert result["round_with_empty_batch_ok"]["ew"] and not result["opacus_handles_empty_batch"]["ew"]
    assert result["in_dp_distiller"] == {"ew": True} and result["errors"] == {}
    assert result["accounting_round_s"] > 0 and result["no_dp_round_cpu_s"] > 0
