"""A federation on the parties' own files, over real processes and mutual TLS, without the built-in datasets.

The student owner gives its probe and test sets as .npz files; three nodes give their records as
.npz files, and their teachers three ways: one node trains its own with DP-SGD, one brings a
torch.export file declared `dp` (its DP-SGD run is charged), one a TorchScript file declared
`public`. Every file is written by this test; nothing names a built-in dataset.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedsa_secure.crypto.pki import AGGREGATOR, NODE, create_ca, issue_certificate
from fedsa_secure.data import aggregator_data, node_data
from fedsa_secure.privacy.ledger import read_entries
from fedsa_secure.privacy.state import find_ledgers
from fedsa_secure.scaffold import write_toml

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # a TorchScript teacher, on purpose
NODES = {"clinic-a": "node-1", "clinic-b": "node-2", "clinic-c": "node-3"}  # name -> the digits shard its records are
DP_RUN = {"noise_multiplier": 1.5, "sample_rate": 0.1, "steps": 200, "max_grad_norm": 1.0}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedsa_secure.cli", "-v", *args]


class Perceptron(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _teacher(x: np.ndarray, y: np.ndarray, classes: int, seed: int) -> nn.Module:
    """A small teacher fitted to the records (stands in for the institution's own model)."""
    torch.manual_seed(seed)
    model = Perceptron(classes)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bring-your-own")
    ca, ca_key = create_ca(root / "keys")
    tls = {
        name: {"ca_cert": ca, **dict(zip(("cert", "key"), issue_certificate(
            ca, ca_key, name, root / "keys", hosts=("localhost", "127.0.0.1"), role=AGGREGATOR if name == "aggregator" else NODE)))}
        for name in ["aggregator", *NODES]
    }
    probe, test = aggregator_data(3)
    np.savez(root / "probe.npz", x=probe.x, y=probe.y)
    np.savez(root / "test.npz", x=test.x, y=test.y)
    teachers: dict[str, dict] = {"clinic-a": {}}
    for name, shard_name in NODES.items():
        shard = node_data(shard_name, seed=3).train
        np.savez(root / f"{name}.npz", x=shard.x[:, 0], y=shard.y)  # [N, 8, 8]: the loader adds the channel
        if name == "clinic-b":
            model = _teacher(shard.x, shard.y, shard.num_classes, seed=1)
            batch = torch.export.Dim("batch")
            torch.export.save(torch.export.export(model, (torch.from_numpy(shard.x[:4]),), dynamic_shapes=({0: batch},)),
                              str(root / "clinic-b.pt2"))
            teachers[name] = {"provenance": "dp", "file": root / "clinic-b.pt2", **DP_RUN}
        elif name == "clinic-c":
            torch.jit.save(torch.jit.script(_teacher(shard.x, shard.y, shard.num_classes, seed=2)), str(root / "clinic-c.pt"))
            teachers[name] = {"provenance": "public", "file": root / "clinic-c.pt"}

    run_dir = root / "run"
    aggregator_toml = write_toml(root / "aggregator.toml", {
        "aggregator": {"listen": "127.0.0.1:0", "run_dir": run_dir, "port_file": run_dir / "port", "join_timeout": 120.0},
        "federation": {"nodes": list(NODES), "method": "fedsa+", "rounds": 2, "adapt_every": 2,
                       "probe": root / "probe.npz", "test": root / "test.npz"},
        "tls": tls["aggregator"],
    })
    aggregator = subprocess.Popen(cli("aggregator", "--config", str(aggregator_toml)), stdout=open(root / "aggregator.log", "w"),
                                  stderr=subprocess.STDOUT)
    processes = [aggregator]
    try:
        port = _wait_for_port(run_dir / "port", aggregator)
        for name in NODES:
            node_toml = write_toml(root / f"{name}.toml", {
                "node": {"name": name, "aggregator": f"127.0.0.1:{port}", "server_name": "aggregator",
                         "state_dir": root / "state" / name},
                "data": {"records": root / f"{name}.npz"},
                "privacy": {"planned_rounds": 2, "local_epochs": 1},
                **({"teacher": teachers[name]} if teachers[name] else {}),
                "tls": tls[name],
            })
            processes.append(subprocess.Popen(cli("node", "--config", str(node_toml)), stdout=open(root / f"{name}.log", "w"),
                                              stderr=subprocess.STDOUT))
        assert aggregator.wait(timeout=900) == 0, (root / "aggregator.log").read_text()[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    return root


def _wait_for_port(port_file: Path, aggregator: subprocess.Popen) -> int:
    deadline = time.monotonic() + 120
    while not port_file.exists():
        assert aggregator.poll() is None and time.monotonic() < deadline, "the aggregator did not start"
        time.sleep(0.1)
    return int(port_file.read_text())


def test_the_federation_runs_on_the_parties_own_files(run: Path) -> None:
    summary = json.loads((run / "run" / "summary.json").read_text())
    assert summary["dataset"] == "own (probe.npz, test.npz)"
    assert summary["test_size"] == len(np.load(run / "test.npz")["y"])
    assert [len(r["survivors"]) for r in summary["history"]] == [3, 3]
    assert 0.0 <= summary["student_accuracy"] <= 1.0 and 0.0 <= summary["scratch_accuracy"] <= 1.0


def test_each_teacher_is_charged_or_declared_as_its_config_says(run: Path) -> None:
    ledgers = {name: read_entries(path) for name, path in find_ledgers(run / "state").items()}
    assert set(ledgers) == set(NODES)
    first = {name: (entries[0]["kind"], entries[0].get("provenance")) for name, entries in ledgers.items()}
    assert first == {"clinic-a": ("teacher", "train"), "clinic-b": ("teacher", "dp"), "clinic-c": ("declaration", "public")}
    charged = ledgers["clinic-b"][0]
    assert {key: charged[key] for key in DP_RUN} == DP_RUN
    for entries in ledgers.values():
        assert sum(e["kind"] == "distillation" for e in entries) == 2


def test_the_audit_verifies_and_says_which_teacher_is_public(run: Path) -> None:
    audit = subprocess.run(cli("audit", str(run / "run"), "--nodes", str(run / "state"), "--json"),
                           capture_output=True, text=True, timeout=300)
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["verdict"]["ok"], report["verdict"]
    by_name = {node["name"]: node for node in report["nodes"]}
    assert set(by_name) == set(NODES)
    assert "public" in json.dumps(by_name["clinic-c"]).lower()
