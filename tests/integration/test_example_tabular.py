"""examples/tabular: a federation whose records are not images (30 measurements per record), its student and loaders
in the example's own module. The checks run by default; the whole federation with `pytest -m slow`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedsa_secure.launch import check_node_inputs, read_federation
from fedsa_secure.models import check_student, use_student

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tabular"


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "tabular"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("keys", "state", "run", "__pycache__"))
    sys.modules.pop("federation", None)  # another test's federation.py may have been imported under that name
    yield copy
    sys.modules.pop("federation", None)


def test_every_party_of_the_example_passes_the_checks_before_a_launch(example: Path) -> None:
    aggregator, nodes = read_federation(example)
    check_node_inputs(nodes)  # records from federation.records, the student from federation.student
    assert aggregator.federation.method == "fedsa+" and sorted(nodes) == ["hospital-a", "hospital-b", "hospital-c"]
    sys.path.insert(0, str(example))
    try:
        import federation  # the example's own module
    finally:
        sys.path.remove(str(example))
    sizes = {part: len(federation.labelled(part)[1]) if part in ("probe", "test") else len(federation.records(part)[1])
             for part in federation.PARTS}
    assert sizes == federation.PARTS and sum(sizes.values()) == 569  # every record in exactly one party's hands
    check_student(use_student(aggregator.federation.student), 2, federation.labelled("probe")[0])
    x, _ = federation.records("hospital-a")
    assert x.shape == (130, 30) and np.allclose(x.mean(axis=0), 0, atol=1e-5)  # standardised with its own statistics


@pytest.mark.slow
def test_the_example_federation_runs_and_its_audit_verifies(example: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fedsa_secure.cli", "launch", str(example), "--json"], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["privacy_verified"] and summary["probe_size"] == 20 and summary["test_size"] == 169
    assert all(n["epsilon"] <= n["target_epsilon"] and n["rounds_trained"] == 10 for n in summary["nodes"])
    assert summary["student_accuracy"] > 0.8  # Scratch on the 20 probe labels reaches about 0.91 on this easy task
