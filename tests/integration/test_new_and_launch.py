"""From nothing to a federation of one's own with `new`, edits and `launch`: records that are not images (tabular),
the parties' own files and code, real processes over mutual TLS.

The test does what a new user does: `fedsa-secure new DIR`, then writes its own files (records as .npz, with
and without labels, a TorchScript teacher, the student owner's probe and test sets), replaces federation.py
with its own student and records loader, uncomments the config lines the templates offer, and runs
`fedsa-secure launch DIR --json`. Nothing names a built-in dataset or architecture.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedsa_secure.privacy.ledger import read_entries
from fedsa_secure.privacy.state import find_ledgers

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # a TorchScript teacher, on purpose
FEATURES, CLASSES = 12, 3
NODES = ("node-1", "node-2", "node-3", "node-4")  # the names `new` gives (a certificate each)

CODE = f'''"""The federation's own code: a student for tabular records and one node's records loader."""

import numpy as np
from torch import nn

from fedsa_secure import Student


def student(num_classes: int) -> Student:
    return Student(nn.Sequential(nn.Linear({FEATURES}, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU()), 32, num_classes)


def records(node: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(f"{{node}}-loaded.npz")
    return data["x"], data["y"]
'''


def tabular(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Records of three classes, each a Gaussian cloud around its own centre in 12 features (centres fixed)."""
    centres = np.random.default_rng(0).normal(0.0, 1.0, (CLASSES, FEATURES))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, count)
    return (centres[y] + rng.normal(0.0, 1.0, (count, FEATURES))).astype(np.float32), y.astype(np.int64)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsa_secure.cli", *args], capture_output=True, text=True, timeout=900, cwd=cwd)


def uncomment(path: Path, *lines: str) -> None:
    text = path.read_text()
    for line in lines:
        assert re.search(rf"^# {re.escape(line)}", text, re.M), f"{path.name} offers no line {line!r}"
        text = re.sub(rf"^# {re.escape(line)}", line, text, flags=re.M)
    path.write_text(text)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("new-and-launch")
    made = cli("new", str(root / "fed"), "--dataset", "digits", "--rounds", "3")
    assert made.returncode == 0, made.stderr
    fed = root / "fed"
    (fed / "federation.py").write_text(CODE)
    probe_x, probe_y = tabular(15, seed=1)
    np.savez(fed / "probe.npz", x=probe_x, y=probe_y)
    np.savez(fed / "test.npz", **dict(zip("xy", tabular(600, seed=2))))
    uncomment(fed / "aggregator.toml", 'probe = "probe.npz"', 'test = "test.npz"')
    for seed, name in enumerate(NODES, start=10):
        x, y = tabular(600, seed)
        if name == "node-2":  # its records come from its own loader in federation.py
            np.savez(fed / "node-2-loaded.npz", x=x, y=y)
            uncomment(fed / "node-2.toml", 'records = "federation:records"')
            continue
        if name == "node-3":  # its own teacher, trained on public data; its records need no labels
            np.savez(fed / "node-3.npz", x=x)
            torch.jit.save(torch.jit.script(_teacher(*tabular(2000, seed=99))), str(fed / "node-3-teacher.pt"))
            uncomment(fed / "node-3.toml", "[teacher]", 'file = "node-3-teacher.pt"', 'provenance = "public"')
        else:
            np.savez(fed / f"{name}.npz", x=x, y=y)
        uncomment(fed / f"{name}.toml", f'records = "{name}.npz"')
    launched = cli("launch", str(fed), "--json", cwd=fed)  # the loader reads files relative to where it runs
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    return fed, json.loads(launched.stdout.strip().splitlines()[-1])


def _teacher(x: np.ndarray, y: np.ndarray) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, CLASSES))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        optimiser.step()
    return model.eval()


def test_the_users_federation_runs_on_its_own_tabular_files_and_code(federation: tuple[Path, dict]) -> None:
    fed, summary = federation
    assert summary["dataset"] == "own (probe.npz, test.npz)" and summary["test_size"] == 600 and summary["probe_size"] == 15
    assert summary["rounds"] == 3 and all(len(r["survivors"]) == 3 for r in summary["history"])
    assert summary["privacy_verified"] and all(n["epsilon"] <= n["target_epsilon"] + 1e-9 for n in summary["nodes"])
    assert summary["student_accuracy"] > 1 / CLASSES + 0.2  # the classes are far apart: anything learnt shows
    metadata = json.loads((fed / "run" / "student.json").read_text())
    assert metadata["architecture"] == "federation:student" and metadata["input_shape"] == [FEATURES]
    sys.path.insert(0, str(fed))
    sys.modules.pop("federation", None)  # another test's federation.py may have been imported under that name
    try:
        from federation import student  # the user's own class holds the trained weights
    finally:
        sys.path.remove(str(fed))
        sys.modules.pop("federation", None)
    model = student(CLASSES)
    model.load_state_dict(torch.load(fed / "run" / "student.pt", weights_only=True))
    x, y = tabular(600, seed=2)
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert accuracy == pytest.approx(summary["student_accuracy"])


def test_each_node_used_the_records_and_teacher_its_edited_config_names(federation: tuple[Path, dict]) -> None:
    fed, _ = federation
    ledgers = {name: read_entries(path) for name, path in find_ledgers(fed / "state").items()}
    first = {name: (entries[0]["kind"], entries[0].get("provenance")) for name, entries in ledgers.items()}
    assert first == {"node-1": ("teacher", "train"), "node-2": ("teacher", "train"), "node-3": ("declaration", "public"),
                     "node-4": ("teacher", "train")}
    assert (fed / "keys" / "ca.pem").exists() and (fed / "keys" / "node-4.key").stat().st_mode & 0o077 == 0


@pytest.mark.slow  # a whole second run; tests/integration/test_restart.py covers a second run's budget by default
def test_a_second_launch_continues_each_nodes_budget(federation: tuple[Path, dict]) -> None:
    """The state directory belongs to the records: launching again spends from the same budget, never from zero."""
    fed, summary = federation
    before = {n["name"]: n["epsilon"] for n in summary["nodes"]}
    again = cli("launch", str(fed), "--json", cwd=fed)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = json.loads(again.stdout.strip().splitlines()[-1])
    (kept,) = fed.glob("run-*")  # each launch is a new run; the finished one is kept beside it
    assert json.loads((kept / "summary.json").read_text())["nodes"] == summary["nodes"]
    spent = {n["name"]: n["epsilon"] for n in after["nodes"]}
    assert all(spent[name] >= before[name] for name in before)
    assert any(n["declines"] for n in after["nodes"]) or after["stopped"]  # planned for 3 rounds: budgets are spent
