"""A node's budget survives SIGKILL, restarts and new runs: its ledger is replayed, never reset, never charged twice.

Real processes over mutual TLS (one aggregator, four digits nodes, `fedsa+`). node-1 is killed with
SIGKILL as soon as its ledger holds a round (its update may or may not have left), then started
again with the same configuration: it replays its ledger, rejoins, is asked to select again and
goes on. A second run on the same node state continues every node's budget where the first ended.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsa_secure.crypto.pki import AGGREGATOR, NODE, create_ca, issue_certificate
from fedsa_secure.privacy.accounting import epsilon_of
from fedsa_secure.privacy.crosscheck import histories
from fedsa_secure.privacy.ledger import read_entries
from fedsa_secure.privacy.state import find_ledgers
from fedsa_secure.scaffold import write_toml

NODES = ["node-1", "node-2", "node-3", "node-4"]
PLANNED, ROUNDS = 3, 6


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedsa_secure.cli", "-v", *args]


class Federation:
    """Configs for one aggregator and four nodes whose state lives in `root/nodes`, kept across runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ca, ca_key = create_ca(root / "keys")
        self.tls = {
            name: {"ca_cert": ca, **dict(zip(("cert", "key"), issue_certificate(
                ca, ca_key, name, root / "keys", hosts=("localhost", "127.0.0.1"), role=AGGREGATOR if name == "aggregator" else NODE)))}
            for name in ["aggregator", *NODES]
        }

    def start_aggregator(self, run: str, rounds: int, port: int = 0) -> tuple[subprocess.Popen, int]:
        run_dir = self.root / run
        config = write_toml(self.root / f"{run}-aggregator.toml", {
            "aggregator": {"listen": f"127.0.0.1:{port}", "run_dir": run_dir, "port_file": run_dir / "port",
                           "join_timeout": 120.0, "stage_timeout": 20.0},
            "federation": {"nodes": NODES, "method": "fedsa+", "dataset": "digits", "rounds": rounds},
            "tls": self.tls["aggregator"],
        })
        log = open(self.root / f"{run}-aggregator.log", "w")
        process = subprocess.Popen(cli("aggregator", "--config", str(config)), stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while not (run_dir / "port").exists():
            assert process.poll() is None and time.monotonic() < deadline, self.log(run)
            time.sleep(0.1)
        return process, int((run_dir / "port").read_text())

    def start_node(self, name: str, port: int, log_name: str) -> subprocess.Popen:
        config = write_toml(self.root / f"{log_name}.toml", {
            "node": {"name": name, "aggregator": f"127.0.0.1:{port}", "server_name": "aggregator",
                     "state_dir": self.root / "nodes" / name, "reconnect_timeout": 120.0},
            "data": {"dataset": "digits", "seed": 0},
            "privacy": {"planned_rounds": PLANNED, "local_epochs": 1},
            "tls": self.tls[name],
        })
        log = open(self.root / f"{log_name}.log", "w")
        return subprocess.Popen(cli("node", "--config", str(config)), stdout=log, stderr=subprocess.STDOUT, text=True)

    def log(self, name: str) -> str:
        return (self.root / f"{name}-aggregator.log").read_text() if (self.root / f"{name}-aggregator.log").exists() else ""

    def ledger(self, name: str) -> list[dict]:
        path = find_ledgers(self.root / "nodes").get(name)
        return read_entries(path) if path is not None else []


def finish(aggregator: subprocess.Popen, nodes: list[subprocess.Popen], timeout: float = 600) -> int:
    try:
        return aggregator.wait(timeout=timeout)
    finally:
        for process in [aggregator, *nodes]:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Run 1 with node-1 killed and restarted, then run 2 on the same node state."""
    fed = Federation(tmp_path_factory.mktemp("restart"))
    aggregator, port = fed.start_aggregator("run1", ROUNDS)
    nodes = {name: fed.start_node(name, port, f"run1-{name}") for name in NODES}
    deadline = time.monotonic() + 300
    while sum(e["kind"] == "distillation" for e in fed.ledger("node-1")) < 1:  # killed once a round is charged
        assert aggregator.poll() is None and time.monotonic() < deadline, fed.log("run1")
        time.sleep(0.05)
    nodes["node-1"].send_signal(signal.SIGKILL)
    nodes["node-1"].wait()
    at_kill = fed.ledger("node-1")
    restarted = fed.start_node("node-1", port, "run1-node-1-restarted")
    status = finish(aggregator, [*nodes.values(), restarted])
    assert status == 0, fed.log("run1")
    after_run1 = {name: fed.ledger(name) for name in NODES}
    aggregator, port = fed.start_aggregator("run2", 2)
    status = finish(aggregator, [fed.start_node(name, port, f"run2-{name}") for name in NODES])
    assert status == 0, fed.log("run2")
    return fed, at_kill, after_run1


def test_the_killed_node_rejoins_with_the_epsilon_its_ledger_holds(federation):
    fed, at_kill, _ = federation
    log = fed.log("run1")
    said = re.search(r"node-1 joined again; its ledger says epsilon ([0-9.]+)", log)
    assert said, log[-3000:]
    assert float(said.group(1)) == pytest.approx(at_kill[-1]["epsilon"], abs=5e-4)  # replayed, not restarted from 0
    replayed = (fed.root / "run1-node-1-restarted.log").read_text()
    assert f"verified: {len(at_kill)} entries, epsilon {at_kill[-1]['epsilon']:.4f}" in replayed
    summary = json.loads((fed.root / "run1" / "summary.json").read_text())
    told = [record["epsilon"]["node-1"] for record in summary["history"]]
    assert told == sorted(told)  # the aggregator never saw node-1's epsilon go down


@pytest.mark.parametrize("run", ["run1", "run2"])
def test_every_ledger_verifies_and_nothing_is_charged_twice(federation, run):
    fed, _, _ = federation
    audit = subprocess.run(cli("audit", str(fed.root / run), "--nodes", str(fed.root / "nodes"), "--json"),
                           capture_output=True, text=True, timeout=300)
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["headline"]["holds"], report["verdict"]
    for name in NODES:
        entries = fed.ledger(name)
        assert [e["kind"] for e in entries][:1] == ["teacher"] and sum(e["kind"] == "teacher" for e in entries) == 1
        cumulative = histories(entries)
        for entry, history in zip(entries, cumulative):  # each figure is its own mechanisms composed, nothing else
            assert entry["epsilon"] == pytest.approx(epsilon_of(history, 1e-5, "prv"), abs=1e-9)
            assert entry["epsilon"] <= 8.0
        run1_rounds = [e["round"] for e in entries if e["kind"] == "distillation"]
        assert len(run1_rounds) <= PLANNED  # the budget holds across the kill and both runs


def test_a_second_run_continues_every_budget(federation):
    fed, _, after_run1 = federation
    summary = json.loads((fed.root / "run2" / "summary.json").read_text())
    for node in summary["nodes"]:
        before = after_run1[node["name"]]
        assert node["epsilon"] >= before[-1]["epsilon"] > 0  # from the ledger, not from zero
        assert node["ledger_entries"] >= len(before)
    for name in NODES:  # run 2 only appended to run 1's ledgers
        assert fed.ledger(name)[: len(after_run1[name])] == after_run1[name]


def test_nodes_outlive_their_aggregator_and_join_the_next_one(tmp_path):
    """SIGKILL the aggregator mid-run; the nodes keep trying, join a new aggregator on the same address, and finish
    its run with their ledgers continued."""
    fed = Federation(tmp_path)
    first, port = fed.start_aggregator("first", ROUNDS)
    nodes = [fed.start_node(name, port, f"first-{name}") for name in NODES]
    deadline = time.monotonic() + 300
    while "round 1/" not in fed.log("first"):
        assert first.poll() is None and time.monotonic() < deadline, fed.log("first")
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {name: fed.ledger(name) for name in NODES}
    second, _ = fed.start_aggregator("second", 2, port=port)
    assert finish(second, nodes) == 0, fed.log("second")
    assert all(node.returncode == 0 for node in nodes)  # every node saw the second run through, then left
    summary = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert summary["rounds"] >= 1 and summary["history"][0]["survivors"]  # a round completed with the same nodes
    for name in NODES:
        after = fed.ledger(name)
        assert after[: len(before[name])] == before[name] and sum(e["kind"] == "teacher" for e in after) == 1
