"""A real federation: one aggregator and four node processes over mutual TLS on 127.0.0.1.

Nodes and aggregator run in test mode, writing each node's plaintext weighted update, each
masked upload and the aggregate to a dump directory, so the test can check that the secure
sum equals the plaintext sum, that the student the aggregator saved after each round is the
round's starting student plus the plaintext sum (to the quantization step), and that an upload
alone says nothing about its update.
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

from fedsa_secure.models import backbone_state, flatten_state, make_student
from fedsa_secure.privacy.ledger import read_entries, verify_entries
from fedsa_secure.privacy.state import find_ledgers
from fedsa_secure.secagg.messages import QuantizationSpec
from fedsa_secure.secagg.packing import unpack
from fedsa_secure.secagg.quantize import quantization_step, required_modulus_bits

ROUNDS = 2


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Runs the demo command with the paper's method on digits (four nodes: the fast setting; the default,
    fedsa+ on mnist1d, runs in test_budget_and_audit), plus the hidden test-only dump switch."""
    root = tmp_path_factory.mktemp("federation")
    command = [sys.executable, "-m", "fedsa_secure.cli", "demo", "--json", "--method", "fedsa", "--dataset", "digits",
               "--local-epochs", "2", "--rounds", str(ROUNDS),
               "--out", str(root / "run"), "--test-dump-dir", str(root / "dump")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert sum(line.startswith("round ") for line in lines) == ROUNDS  # one progress line per round
    return json.loads(lines[-1]), root


def updates_by_round(dump: Path) -> dict[int, dict[str, np.ndarray]]:
    rounds: dict[int, dict[str, np.ndarray]] = {}
    for path in dump.glob("update-r*-*.npy"):
        number, name = re.match(r"update-r(\d+)-(.+)\.npy", path.name).groups()
        rounds.setdefault(int(number), {})[name] = np.load(path)
    return rounds


def test_summary_has_the_promised_fields(federation):
    summary, root = federation
    assert summary["rounds"] == ROUNDS
    assert 0.0 <= summary["student_accuracy"] <= 1.0 and 0.0 <= summary["scratch_accuracy"] <= 1.0
    difference = summary["student_minus_scratch"]
    assert difference["difference"] == pytest.approx(summary["student_accuracy"] - summary["scratch_accuracy"], abs=1e-12)
    assert difference["low"] <= difference["difference"] <= difference["high"]
    assert Path(summary["run_dir"]) == (root / "run").resolve()
    assert {n["name"] for n in summary["nodes"]} == {"node-1", "node-2", "node-3", "node-4"}
    for node in summary["nodes"]:
        assert node["epsilon"] <= node["target_epsilon"] == 8.0
        assert node["delta"] == 1e-5
    assert sum(n["rounds_trained"] for n in summary["nodes"]) == 3 * ROUNDS
    for name in ("student.pt", "student.json", "summary.json"):
        assert (root / "run" / name).exists()
    assert json.loads((root / "run" / "student.json").read_text())["method"] == "fedsa"


def test_secure_aggregate_equals_plaintext_mean(federation):
    """Nodes add unweighted updates; the aggregator divides the unmasked sum by the survivors."""
    summary, root = federation
    dump = root / "dump"
    clip, level_bits = summary["secagg"]["clip"], summary["secagg"]["level_bits"]
    rounds = updates_by_round(dump)
    assert sorted(rounds) == list(range(1, ROUNDS + 1))
    for number, updates in rounds.items():
        assert len(updates) == 3
        aggregate = np.load(dump / f"aggregate-r{number}.npy")
        plaintext = sum(np.clip(u, -clip, clip) for u in updates.values()) / len(updates)
        step = 2 * clip / 2**level_bits
        error = np.abs(aggregate - plaintext)
        assert error.max() <= step, (error.max(), step)
        assert np.abs(plaintext).max() > 100 * step  # the comparison is not trivially between zeros


def saved_student(run_dir: Path, number: int, summary: dict) -> np.ndarray:
    """The released parts of the student the aggregator checkpointed after round `number` (0: before round 1)."""
    model = make_student(num_classes=10, seed=0)
    model.load_state_dict(torch.load(run_dir / "checkpoints" / f"student-r{number}.pt", weights_only=True))
    return flatten_state(backbone_state(model, tuple(summary["released"]))).astype(np.float64)


def excess_over_quantization(start: np.ndarray, updates: list[np.ndarray], saved: np.ndarray, summary: dict) -> float:
    """max_i |saved_i - (start_i + mean of plaintext updates_i)| minus what quantizing each update may add.

    Each node's update is clipped and stochastically rounded to within one quantization step,
    so the securely aggregated mean may differ from the plaintext one by at most one step per
    coordinate (plus float32 rounding of the stored student).
    """
    clip = summary["secagg"]["clip"]
    step = quantization_step(QuantizationSpec(clip=clip, level_bits=summary["secagg"]["level_bits"]))
    plaintext_student = start + sum(np.clip(u, -clip, clip) for u in updates) / len(updates)
    allowed = step + 2 * np.spacing(np.abs(saved).astype(np.float32))
    return float((np.abs(saved - plaintext_student) - allowed).max())


def check_secure_student_equals_plaintext_student(run_dir: Path, dump: Path, summary: dict) -> None:
    """Apply each round's plaintext updates to the student it started from and compare with what the aggregator saved."""
    rounds = updates_by_round(dump)
    assert sorted(rounds) == list(range(1, summary["rounds"] + 1))
    for record in summary["history"]:
        number = record["round"]
        assert sorted(record["survivors"]) == sorted(record["cohort"]) == sorted(rounds[number])  # no rescaling
        start, saved = saved_student(run_dir, number - 1, summary), saved_student(run_dir, number, summary)
        updates = list(rounds[number].values())
        assert saved.size == summary["vector_length"] == updates[0].size
        assert excess_over_quantization(start, updates, saved, summary) <= 0
        # The check can fail: the student moved by far more than the tolerance, and missing any one
        # node's update (what a wrong sum would look like) breaks it.
        assert np.abs(saved - start).max() > 100 * quantization_step(
            QuantizationSpec(summary["secagg"]["clip"], summary["secagg"]["level_bits"]))
        for left_out in range(len(updates)):
            assert excess_over_quantization(start, updates[:left_out] + updates[left_out + 1:], saved, summary) > 0


def test_student_from_secure_sum_equals_student_from_plaintext_sum(federation):
    summary, root = federation
    check_secure_student_equals_plaintext_student(root / "run", root / "dump", summary)


def test_masked_upload_is_unrelated_to_its_update(federation):
    summary, root = federation
    dump = root / "dump"
    clip, level_bits = summary["secagg"]["clip"], summary["secagg"]["level_bits"]
    bits = required_modulus_bits(3, level_bits)
    for number, updates in updates_by_round(dump).items():
        for name, update in updates.items():
            packed = np.load(dump / f"masked-r{number}-{name}.npy").tobytes()
            masked = unpack(packed, bits, update.size).astype(np.float64)
            encoded = (np.clip(update, -clip, clip) + clip) / (2 * clip) * 2**level_bits
            # An unmasked encoding sits in [0, 2**level_bits]; a masked one is uniform over [0, 2**bits).
            assert abs(np.mean(masked > 2**level_bits) - (1 - 2**(level_bits - bits))) < 0.05
            assert abs(np.mean(masked) / 2**bits - 0.5) < 0.05
            assert abs(np.corrcoef(masked, encoded)[0, 1]) < 0.05


def test_every_ledger_verifies_and_records_the_teacher_then_each_round(federation):
    summary, root = federation
    trained = {n["name"]: n["rounds_trained"] for n in summary["nodes"]}
    ledgers = find_ledgers(root / "run" / "nodes")
    assert sorted(ledgers) == sorted(trained)  # one record set per node, every node trained its DP teacher
    for name, count in trained.items():
        entries = read_entries(ledgers[name])
        assert verify_entries(entries).ok
        assert [e["kind"] for e in entries] == ["teacher"] + ["distillation"] * count
        epsilons = [e["epsilon"] for e in entries]
        assert epsilons == sorted(epsilons) and all(e <= 8.0 for e in epsilons)
        assert 3.99 <= epsilons[0] <= 4.0  # the teacher's share (0.5) of the budget, spent first
