"""Chaos: a seeded schedule SIGKILLs the aggregator and the nodes of a real federation at least 20 times, and restarts
each; the run still completes, every ledger verifies, no epsilon exceeds its target or differs from what its ledger's
mechanisms give, and the final student is the one the journal recorded.

Marked slow (a few minutes): `pytest -m slow tests/integration/test_chaos.py`. Kills land at random moments (while
nodes train, during secure-aggregation stages, while the aggregator adapts or commits) and, for half the node kills,
right as the node's ledger gains a line (its update may or may not have left).
"""

from __future__ import annotations

import json
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedsa_secure.crypto import sha256
from fedsa_secure.crypto.pki import AGGREGATOR, NODE, create_ca, issue_certificate
from fedsa_secure.journal import JOURNAL_FILE
from fedsa_secure.privacy.accounting import epsilon_of
from fedsa_secure.privacy.crosscheck import histories
from fedsa_secure.privacy.ledger import read_entries
from fedsa_secure.privacy.state import find_ledgers
from fedsa_secure.scaffold import write_toml

pytestmark = pytest.mark.slow
SEED = 20261207
NODES = ["node-1", "node-2", "node-3", "node-4"]
ROUNDS, KILLS, TARGET = 20, 20, 8.0  # rounds enough to outlast the kills (each adapts: a longer run)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedsa_secure.cli", "-v", *args]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Party:
    name: str
    config: Path
    logs: Path
    process: subprocess.Popen | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.starts += 1
        log = open(self.logs / f"{self.name}-{self.starts}.log", "w")
        command = "aggregator" if self.name == "aggregator" else "node"
        self.process = subprocess.Popen(cli(command, "--config", str(self.config)), stdout=log, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.exits.append(self.process.wait())

    def last_line(self) -> str:
        lines = (self.logs / f"{self.name}-{self.starts}.log").read_text(errors="replace").strip().splitlines()
        return lines[-1][-160:] if lines else ""


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    root = tmp_path_factory.mktemp("chaos")
    logs = root / "logs"
    logs.mkdir()
    ca, ca_key = create_ca(root / "keys")
    tls = {name: {"ca_cert": ca, **dict(zip(("cert", "key"), issue_certificate(
        ca, ca_key, name, root / "keys", hosts=("localhost", "127.0.0.1"), role=AGGREGATOR if name == "aggregator" else NODE)))}
        for name in ["aggregator", *NODES]}
    port = free_port()  # fixed: a restarted aggregator must be found where the nodes left it
    parties = {"aggregator": Party("aggregator", write_toml(root / "aggregator.toml", {
        "aggregator": {"listen": f"127.0.0.1:{port}", "run_dir": root / "run", "join_timeout": 300.0, "stage_timeout": 10.0},
        "federation": {"nodes": NODES, "method": "fedsa+", "dataset": "digits", "rounds": ROUNDS, "adapt_every": 1},
        "tls": tls["aggregator"],
    }), logs)}
    for name in NODES:
        parties[name] = Party(name, write_toml(root / f"{name}.toml", {
            "node": {"name": name, "aggregator": f"127.0.0.1:{port}", "server_name": "aggregator",
                     "state_dir": root / "nodes" / name, "reconnect_timeout": 300.0},
            "data": {"dataset": "digits", "seed": 0},
            # room for the rounds the kills abandon or abort: each is charged like any other (the report lists them)
            "privacy": {"target_epsilon": TARGET, "planned_rounds": 3 * ROUNDS, "local_epochs": 1},
            "tls": tls[name],
        }), logs)
    for party in parties.values():
        party.start()
    rng, kills = random.Random(SEED), []
    aggregator = parties["aggregator"]
    deadline = time.monotonic() + 1500
    try:
        while aggregator.running() or aggregator.process is None:
            assert time.monotonic() < deadline, "the run did not complete"
            if len(kills) >= KILLS:
                time.sleep(0.5)
                continue
            victim = parties[rng.choice(["aggregator", "aggregator", *NODES])]
            if victim.name != "aggregator" and rng.random() < 0.5:
                _wait_for_ledger_line(root, victim.name, timeout=rng.uniform(2.0, 15.0))
            else:
                time.sleep(rng.uniform(0.5, 4.0))
            if not victim.running() or not aggregator.running():
                continue
            kills.append((victim.name, victim.last_line()))
            victim.kill()
            time.sleep(rng.uniform(0.0, 2.0))
            victim.start()
        assert aggregator.process is not None and aggregator.process.wait() == 0, aggregator.last_line()
    finally:
        for party in parties.values():
            if party.running():
                party.kill()
    (root / "kills.json").write_text(json.dumps(kills, indent=1))
    return root, kills


def _wait_for_ledger_line(root: Path, name: str, timeout: float) -> None:
    """Return as soon as `name`'s ledger gains an entry (or after `timeout`)."""
    def size() -> int:
        path = find_ledgers(root / "nodes").get(name)
        return path.stat().st_size if path is not None and path.exists() else 0
    before, end = size(), time.monotonic() + timeout
    while size() == before and time.monotonic() < end:
        time.sleep(0.01)


def test_the_run_completes_after_every_kill(chaos: tuple[Path, list[tuple[str, str]]]) -> None:
    root, kills = chaos
    assert len(kills) >= KILLS and sum(victim == "aggregator" for victim, _ in kills) >= 3, kills
    summary = json.loads((root / "run" / "summary.json").read_text())
    assert [r["round"] for r in summary["history"]] == list(range(1, ROUNDS + 1)) and summary["stopped"] is None


def test_the_final_student_is_the_one_the_journal_recorded(chaos: tuple[Path, list[tuple[str, str]]]) -> None:
    root, _ = chaos
    with sqlite3.connect(root / "run" / JOURNAL_FILE) as db:
        rows = db.execute("SELECT number, student_sha256 FROM rounds ORDER BY number").fetchall()
    assert [n for n, _ in rows] == list(range(1, ROUNDS + 1))
    for number, digest in rows:
        assert sha256((root / "run" / "checkpoints" / f"student-r{number}.pt").read_bytes()).hex() == digest


def test_every_ledger_verifies_and_no_epsilon_exceeds_what_its_mechanisms_give(chaos: tuple[Path, list[tuple[str, str]]]) -> None:
    root, _ = chaos
    audit = subprocess.run(cli("audit", str(root / "run"), "--nodes", str(root / "nodes"), "--json"),
                           capture_output=True, text=True, timeout=600)
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["headline"]["holds"], report["verdict"]
    for name, path in find_ledgers(root / "nodes").items():
        entries = read_entries(path)
        assert sum(e["kind"] == "teacher" for e in entries) == 1, name  # the teacher is charged once, whatever the kills
        for entry, history in zip(entries, histories(entries)):
            assert entry["epsilon"] == pytest.approx(epsilon_of(history, entry["delta"], entry["accountant"]), abs=1e-6)
            assert entry["epsilon"] <= TARGET
    reported = {n["name"]: n for n in report["nodes"]}
    assert all(reported[name]["charged_not_used"] is not None for name in NODES)
