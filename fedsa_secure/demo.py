"""`fedsa-secure demo`: `launch` of a federation directory written for the built-in data, inside a fresh run directory.

Every party is its own OS process over mutual TLS; the run directory holds the configs
(`config/`), the keys, each node's state (`nodes/<name>`: a fresh privacy budget for the demo's
made-up parties), the logs, the student, the summary and the privacy report.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from fedsa_secure.config import DemoOptions
from fedsa_secure.launch import launch
from fedsa_secure.scaffold import Layout, write_federation

NODES_DIR = "nodes"
DEMO_LAYOUT = Layout(run_dir="..", state=f"../{NODES_DIR}", keys="../keys", student="cnn")  # relative to <run>/config


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_demo(options: DemoOptions, echo: TextIO = sys.stdout) -> dict[str, Any]:
    run_dir = options.out or default_run_dir()
    print(f"run directory: {run_dir}", file=echo, flush=True)
    print(f"each node keeps its ledger and DP teacher in {run_dir / NODES_DIR}/<node>: a fresh privacy budget for this "
          "demo's made-up parties (a deployed node keeps its state_dir across runs)", file=echo, flush=True)
    write_federation(run_dir / "config", options, DEMO_LAYOUT)
    return launch(run_dir / "config", echo, options.startup_timeout)
