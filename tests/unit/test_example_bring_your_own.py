"""examples/bring-your-own: its script writes the files its configs name, and every party's files pass the checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedsa_secure.aggregator import own_sets
from fedsa_secure.config import DP_RUN, load_aggregator_config, load_node_config
from fedsa_secure.data.records import load_records
from fedsa_secure.fedsa.teacher import load_teacher_file
from fedsa_secure.models import check_student, use_student

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bring-your-own"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # clinic-c's teacher is TorchScript


def test_the_example_files_fit_its_configs(tmp_path: Path) -> None:
    example = tmp_path / "bring-your-own"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("files", "keys", "state", "run"))
    done = subprocess.run([sys.executable, "make_files.py"], cwd=example, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    aggregator = load_aggregator_config(example / "aggregator.toml")
    fed = aggregator.federation
    assert fed.probe is not None and fed.test is not None
    probe, test = own_sets(fed.probe, fed.test)
    assert probe.num_classes == test.num_classes == 10 and len(probe) == 50  # five labelled images per digit
    check_student(use_student(fed.student), probe.num_classes, probe.x)  # the example's own network, from models.py

    provenances = {}
    for name in fed.nodes:
        config = load_node_config(example / f"{name}.toml")
        assert config.node.name == name and config.data.records is not None
        assert str(config.node.student) == str(fed.student) == "models:student"  # each party builds the same student
        data = load_records(config.data.records, name)
        assert data.train.x.shape[1:] == probe.x.shape[1:]  # the probe's shape: nodes can answer selection
        if config.teacher.file is not None:
            model, relabelled = load_teacher_file(config.teacher.file, data)
            assert relabelled.train.num_classes >= data.train.num_classes
        provenances[name] = config.teacher.provenance
    assert provenances == {"clinic-a": "train", "clinic-b": "dp", "clinic-c": "public"}

    declared = load_node_config(example / "clinic-b.toml").teacher
    run = ", ".join(f"{key} {getattr(declared, key)}" for key in DP_RUN[:3])
    assert f"clinic-b's DP-SGD run: {run}" in done.stdout  # the config declares the run the script made
