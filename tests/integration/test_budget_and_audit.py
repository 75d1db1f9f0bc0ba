"""Budgets enforced across a real `fedsa+` federation, and the audit of its ledgers.

Nodes calibrate their noise for 2 rounds but the aggregator asks for 6: once a node's budget
is spent it is no longer drawn, and when fewer nodes than a cohort have budget left the run
ends cleanly. Then `fedsa-secure audit` verifies what the nodes wrote, and catches tampering.
The same run checks `fedsa+` across processes (test_federation.py runs the faithful `fedsa`):
LogME selection on the nodes leaves the unrelated teachers almost no probability, and the
update that goes through secure aggregation is the backbone plus the target-task head.
The default run uses digits (4 nodes, as long as the `fedsa` run this file had before);
`-m slow` repeats every test on MNIST-5k (6 nodes, about a minute longer).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_federation import check_secure_student_equals_plaintext_student, updates_by_round

from fedsa_secure.data import federation
from fedsa_secure.models import backbone_state, flatten_state, make_student
from fedsa_secure.privacy.ledger import read_entries
from fedsa_secure.privacy.state import find_ledgers

PLANNED, ASKED = 2, 6


def fedsa(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsa_secure.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", params=["digits", pytest.param("mnist1d", marks=pytest.mark.slow)])  # mnist1d: the default demo
def run(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("budget")
    run_dir = root / "run"
    result = fedsa("demo", "--json", "--method", "fedsa+", "--dataset", request.param, "--rounds", str(ASKED),
                   "--planned-rounds", str(PLANNED), "--local-epochs", "1", "--out", str(run_dir), "--test-dump-dir", str(root / "dump"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), run_dir, result.stdout


def test_the_run_stops_cleanly_when_budgets_are_spent(run):
    summary, run_dir, stdout = run
    assert summary["rounds"] < ASKED
    assert "privacy budget left" in summary["stopped"] and summary["stopped"] in stdout
    # 2 rounds of budget per node: the run stops once fewer than 3 can train again.
    assert sum(n["rounds_trained"] for n in summary["nodes"]) == 3 * summary["rounds"]
    assert sum(not n["budget_left_for_a_round"] for n in summary["nodes"]) >= 2
    ledgers = find_ledgers(run_dir / "nodes")
    for node in summary["nodes"]:
        assert node["rounds_trained"] <= PLANNED
        assert node["epsilon"] <= node["target_epsilon"] == 8.0
        entries = read_entries(ledgers[node["name"]])  # every node charged its DP teacher, drawn or not
        assert [e["kind"] for e in entries] == ["teacher"] + ["distillation"] * node["rounds_trained"]
        assert len(entries) == node["ledger_entries"] and node["ledger_head"] == entries[-1]["hash"]
        assert node["epsilon"] == entries[-1]["epsilon"] and all(e["epsilon"] <= 8.0 for e in entries)
        rounds = entries[1:]
        assert all(e["method"] == "fedsa+" for e in rounds)
        assert all(e["steps"] == round(1 / e["sample_rate"]) for e in rounds)  # --local-epochs 1: one pass a round
    assert (run_dir / "student.pt").exists()


def test_fedsa_plus_sends_backbone_and_head_through_secure_aggregation(run):
    summary, run_dir, _ = run
    assert summary["method"] == "fedsa+" and summary["dataset"] in ("digits", "mnist1d")
    assert json.loads((run_dir / "student.json").read_text())["method"] == "fedsa+"
    student = make_student(num_classes=10, seed=0)
    backbone = flatten_state(backbone_state(student)).size
    with_head = flatten_state(backbone_state(student, ("features", "head"))).size
    assert summary["released"] == ["features", "head"] and summary["vector_length"] == with_head > backbone
    updates = [u for by_node in updates_by_round(run_dir.parent / "dump").values() for u in by_node.values()]
    assert len(updates) == 3 * summary["rounds"]
    assert all(u.size == with_head for u in updates)
    assert all(np.abs(u[backbone:]).max() > 0 for u in updates)  # the head really was trained and sent


def test_student_from_secure_sum_equals_student_from_plaintext_sum(run):
    summary, run_dir, _ = run
    check_secure_student_equals_plaintext_student(run_dir, run_dir.parent / "dump", summary)


def test_logme_selection_gives_unrelated_teachers_almost_no_probability(run):
    summary, _, _ = run
    scores, tasks = summary["transferability"], federation(summary["dataset"]).nodes
    assert set(scores) == set(tasks)
    unrelated = [n for n, task in tasks.items() if task.startswith("unrelated")]
    class_subsets = [n for n, task in tasks.items() if task.startswith("digits-")]
    assert min(scores[n] for n in class_subsets) > max(scores[n] for n in unrelated) + 0.02
    probabilities = summary["history"][0]["probabilities"]  # one LogME selection serves the whole run
    assert all(h["probabilities"] == probabilities for h in summary["history"])
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert all(probabilities[n] < 0.01 for n in unrelated), probabilities
    assert sum(probabilities[n] for n in class_subsets) > 0.95


def test_the_demo_writes_a_verified_report(run):
    summary, run_dir, _ = run
    assert summary["privacy_verified"] is True
    report = json.loads((run_dir / "report.json").read_text())
    assert report["schema"] == "fedsa-secure/privacy-report" and report["verdict"] == {"ok": True, "problems": []}
    side = {"digits": 8, "mnist1d": 14}[summary["dataset"]]
    assert report["headline"]["holds"] and not [i for i in report["not_covered"] if i["severity"] == "red"]
    for node in report["nodes"]:  # the guarantee covers each node's DP teacher, and says what one record is
        assert node["teacher"]["entries"] == [0] and 3.99 <= node["teacher"]["epsilon_alone"] <= 4.0
        assert f"a float32 array of shape 1x{side}x{side} with its label" in node["unit"]
    html = (run_dir / "report.html").read_text()
    assert "<img" in html or "<svg" in html  # plots are embedded: the file stands alone
    assert "<script src" not in html and "<link" not in html  # nothing to fetch


def test_audit_verifies_the_run_and_recomputes_epsilon(run):
    summary, run_dir, _ = run
    result = fedsa("audit", str(run_dir), "--json", "--out", str(run_dir / "audit"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    reported = {n["name"]: n for n in summary["nodes"]}
    for node in report["nodes"]:
        assert node["ledger"]["ok"]
        if reported[node["name"]]["rounds_trained"]:
            figures = node["crosscheck"]["figures"]
            assert figures["opacus_prv"] == pytest.approx(reported[node["name"]]["epsilon"], rel=1e-6)
            assert figures["dp_accounting_pld"] == pytest.approx(figures["opacus_prv"], abs=0.1)
            assert figures["opacus_rdp"] >= figures["opacus_prv"]  # RDP is the looser bound
    assert (run_dir / "audit" / "report.html").exists()


def test_the_canary_audit_replays_a_node_s_mechanism_on_that_node_s_own_records(run):
    summary, run_dir, _ = run
    result = fedsa("audit", str(run_dir), "--empirical", "--json", "--out", str(run_dir / "empirical"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    empirical = json.loads(result.stdout)["empirical"]
    entries = read_entries(find_ledgers(run_dir / "nodes")[empirical["node"]])
    assert empirical["records"] == entries[-1]["records"] == len(federation(summary["dataset"]).node(empirical["node"], 0).train)
    assert empirical["consistent"] and empirical["accounted_epsilon"] == pytest.approx(entries[-1]["epsilon"], abs=0.01)


@pytest.mark.parametrize("tamper, named", [
    ("lower", "entry 0 was modified"),
    ("truncate", "truncated"),
])
def test_audit_names_the_tampered_entry(run, tmp_path, tamper, named):
    summary, run_dir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    name = next(n["name"] for n in summary["nodes"] if n["rounds_trained"] == PLANNED)
    ledger = find_ledgers(copy / "nodes")[name]
    lines = ledger.read_text().splitlines()
    if tamper == "lower":
        entry = json.loads(lines[0])
        entry["epsilon"] /= 2
        lines[0] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    else:
        lines = lines[:-1]
    ledger.write_text("\n".join(lines) + "\n")
    result = fedsa("audit", str(ledger))
    assert result.returncode == 1
    assert f"{name}: ledger FAILED" in result.stdout and named in result.stdout, result.stdout
