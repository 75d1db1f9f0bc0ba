"""Stopping `fedsa-secure demo` with SIGTERM stops every party it started: no aggregator or node is left running."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def parties_of(run_dir: Path) -> list[int]:
    """Pids of live processes whose command line names a config of this run."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(run_dir / "config") in cmdline:
                pids.append(int(entry.name))
    return pids


def test_sigterm_stops_the_demo_and_every_party(tmp_path):
    run_dir = tmp_path / "run"
    demo = subprocess.Popen([sys.executable, "-m", "fedsa_secure.cli", "demo", "--dataset", "digits", "--rounds", "50",
                             "--out", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while len(parties_of(run_dir)) < 5:  # the aggregator and four nodes
        assert demo.poll() is None and time.monotonic() < deadline, "the demo did not start its parties"
        time.sleep(0.2)
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(timeout=30) == 128 + signal.SIGTERM
    assert parties_of(run_dir) == [], "parties outlived the demo"
    assert os.path.exists(run_dir / "logs" / "aggregator.log")
