"""The privacy audit report of a run: every node's ledger verified, recomputed, and stated in plain words.

`build_report` assembles the versioned JSON document (docs/report-schema.md) from the run
directory: the ledgers (the authoritative record of what each node spent), the aggregator's
summary (accuracy, cohorts, and witnesses of each ledger), the cross-check and the
epsilon(delta) curves. `write_report` writes it as report.json and a self-contained
report.html. Only whitelisted fields are copied, so no key path or seed reaches a report.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

from fedsa_secure.files import atomic_write
from fedsa_secure.privacy.accounting import SECURE_MODE_AVAILABLE, SECURE_MODE_REASON, library_versions
from fedsa_secure.privacy.crosscheck import ACCOUNTANTS, OPACUS_NAMES, RECOMPUTE_TOLERANCE, crosscheck, epsilon_by, histories
from fedsa_secure.privacy.ledger import LedgerHead, head_path, read_head, verify_file
from fedsa_secure.privacy.report_html import render_html

SCHEMA = "fedsa-secure/privacy-report"
SCHEMA_VERSION = 1
CURVE_DELTAS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)
EPSILON_MATCH = 1e-9  # the aggregator stores the float the node sent; equal up to JSON round-trip
MECHANISM_FIELDS = ("seq", "round", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "delta", "accountant", "epsilon")
RUN_FIELDS = ("method", "rounds", "student_accuracy", "scratch_accuracy", "probe_size", "test_size")

STATEMENT: dict[str, Any] = {
    "unit_of_privacy": "One record (one 8x8 image) of one node's private data.",
    "adjacency": (
        "Add or remove one record of one node's data (add/remove adjacency). The guarantee is per node: "
        "each node's figure bounds what its own releases reveal about any one of its records."
    ),
    "threat_model": (
        "Anyone who sees what a node releases, in every round: the aggregator, the other nodes, and whoever "
        "obtains the student, even if they see the node's proxy update in the clear and know every other "
        "record. Secure aggregation hides individual updates from the aggregator as well, but the figures "
        "here do not rely on it: each node applies DP-SGD locally before anything leaves its machine. "
        "The node's own machine is trusted."
    ),
    "covered": [
        "The proxy-backbone updates each node releases, over all rounds it trained in (one accountant per "
        "node for the whole federation; epsilon composes across rounds).",
        "Everything computed from those updates afterwards (the aggregate, the student, its adaptation): "
        "post-processing cannot increase epsilon.",
    ],
    "not_covered": [
        "The teacher is treated as a fixed function. It was trained on the same private records without DP, "
        "so a record's influence through the teacher's weights (the distillation targets) is not bounded.",
        "Transferability scores (one scalar per node per selection, computed with the teacher) are sent "
        "without noise and are not accounted. There is no option to noise them yet.",
        "The aggregator's probe set (its labelled images, sent to every node) is not protected.",
        "Opacus secure_mode is off: " + SECURE_MODE_REASON,
        "Each node's dataset size is treated as public: it sets the sample rate recorded in the ledger.",
        "Which rounds a node trained in or declined is visible; declines depend only on the budget, not on the data.",
    ],
}


def build_report(run_dir: Path | None, ledgers: dict[str, Path] | None = None, empirical: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report document for a run directory, or for explicit ledgers (then `run_dir` may be None)."""
    summary = _read_json(run_dir / "summary.json") if run_dir is not None else None
    if ledgers is None:
        ledgers = _run_ledgers(run_dir, summary) if run_dir is not None else {}
    nodes = [_node(name, path, summary, run_dir) for name, path in sorted(ledgers.items())]
    problems = [f"{n['name']}: {p}" for n in nodes for p in n["problems"]]
    accountants = sorted({n["accountant"] for n in nodes if n["accountant"]})
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "generator": {"fedsa_secure": version("fedsa-secure"), "libraries": library_versions()},
        "subject": {"kind": "run" if summary is not None else "ledgers", "name": run_dir.name if run_dir else None},
        "verdict": {"ok": not problems, "problems": problems},
        "statement": STATEMENT,
        "secure_mode": {"available": SECURE_MODE_AVAILABLE, "reason": SECURE_MODE_REASON},
        "accounting": {
            "accountants": accountants,
            "crosscheck_accountants": list(ACCOUNTANTS),
            "recompute_tolerance": RECOMPUTE_TOLERANCE,
            "mechanism": "DP-SGD (Opacus), Poisson sampling, per-sample clipping to max_grad_norm, Gaussian noise",
        },
        "run": _run(summary),
        "rounds": _rounds(summary),
        "nodes": nodes,
        "empirical": empirical,
    }


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """Write report.json and report.html into the run directory (the demo calls this at its end)."""
    return write_files(build_report(Path(run_dir)), Path(run_dir))


def write_files(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Both renderings of one report, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    atomic_write(json_path, json.dumps(report, indent=2, allow_nan=False, default=_json_default) + "\n")
    atomic_write(html_path, render_html(report))
    return json_path, html_path


def _json_default(value: Any) -> Any:
    raise TypeError(f"report field of type {type(value).__name__} is not JSON")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _run_ledgers(run_dir: Path, summary: dict[str, Any] | None) -> dict[str, Path]:
    """Every node the summary names plus every ledger file present (a ledger without a node is still audited)."""
    names = {n["name"] for n in (summary or {}).get("nodes", [])}
    names |= {p.stem for p in (run_dir / "ledgers").glob("*.jsonl")}
    return {name: run_dir / "ledgers" / f"{name}.jsonl" for name in names}


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an unbounded epsilon is written as null and explained by the problem list."""
    return value if value is not None and math.isfinite(value) else None


def _node(name: str, path: Path, summary: dict[str, Any] | None, run_dir: Path | None) -> dict[str, Any]:
    reported = next((n for n in (summary or {}).get("nodes", []) if n["name"] == name), {})
    anchors = _anchors(name, path, summary, reported)
    entries, verification = verify_file(path, anchors)
    problems = [] if verification.ok else [f"ledger: {verification.reason}"]
    problems += _epsilon_witness(name, entries, summary)
    check = crosscheck(entries) if verification.ok else None
    problems += check.problems if check else []
    target = _target(entries, reported)
    last = entries[-1] if entries else None
    for entry in entries:
        if target is not None and float(entry["epsilon"]) > target:
            problems.append(f"entry {entry['seq']} (round {entry['round']}) spends epsilon {entry['epsilon']} > budget {target}")
    epsilon = float(last["epsilon"]) if last else 0.0
    return {
        "name": name,
        "ledger": {
            "file": str(path.relative_to(run_dir)) if run_dir and path.is_relative_to(run_dir) else path.name,
            "present": path.exists(),
            "entries": verification.entries,
            "ok": verification.ok,
            "first_bad": verification.first_bad,
            "reason": verification.reason,
            "head": last["hash"] if last else None,
            "anchors": [a.as_dict() | {"source": a.source} for a in anchors],
        },
        "target_epsilon": target,
        "delta": float(last["delta"]) if last else reported.get("delta"),
        "accountant": str(last["accountant"]) if last else None,
        "epsilon": _finite(epsilon),
        "remaining_epsilon": None if target is None else _finite(target - epsilon),
        "rounds_trained": len(entries),
        "declines": reported.get("declines"),
        "versions": {str(k): str(v) for k, v in last["versions"].items()} if last and isinstance(last.get("versions"), dict) else None,
        "mechanism": [{k: entry.get(k) for k in MECHANISM_FIELDS} | {"epsilon": _finite(float(entry["epsilon"]))} for entry in entries],
        "crosscheck": _crosscheck_dict(check),
        "epsilon_delta_curve": _curve(entries) if check is not None and check.ok else None,
        "problems": problems,
    }


def _anchors(name: str, path: Path, summary: dict[str, Any] | None, reported: dict[str, Any]) -> list[LedgerHead]:
    """Every witness of this ledger: its sidecar, and what the node told the aggregator (count, and heads if sent)."""
    anchors = [head] if (head := read_head(head_path(path))) is not None else []
    if "rounds_trained" in reported:
        anchors.append(LedgerHead(int(reported["rounds_trained"]), None, "summary.json rounds_trained"))
    if "ledger_entries" in reported:
        anchors.append(LedgerHead(int(reported["ledger_entries"]), reported.get("ledger_head"), "summary.json node status"))
    for record in (summary or {}).get("history", []):
        if (seen := record.get("ledger_heads", {}).get(name)) is not None:
            anchors.append(LedgerHead(int(seen["entries"]), seen.get("head"), f"summary.json round {record['round']}"))
    return anchors


def _epsilon_witness(name: str, entries: list[dict[str, Any]], summary: dict[str, Any] | None) -> list[str]:
    """Each epsilon the aggregator was told must be one the ledger recorded: a lowered figure shows here."""
    recorded = [float(e["epsilon"]) for e in entries if isinstance(e.get("epsilon"), (int, float))]
    problems = []
    for record in (summary or {}).get("history", []):
        told = record.get("epsilon", {}).get(name)
        if told and not any(abs(told - eps) <= EPSILON_MATCH * max(1.0, told) for eps in recorded):
            problems.append(
                f"the aggregator recorded epsilon {told:.6f} after round {record['round']}, "
                "but no ledger entry has it (entry edited or removed)"
            )
            break
    return problems


def _target(entries: list[dict[str, Any]], reported: dict[str, Any]) -> float | None:
    if entries and "target_epsilon" in entries[-1]:
        return float(entries[-1]["target_epsilon"])
    return float(reported["target_epsilon"]) if reported.get("target_epsilon") else None


def _crosscheck_dict(check: Any) -> dict[str, Any] | None:
    if check is None:
        return None
    data = check.as_dict()
    data["figures"] = {k: _finite(v) for k, v in data["figures"].items()}
    data["largest_disagreement"] = _finite(data["largest_disagreement"])
    return data


def _curve(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """epsilon at each delta of CURVE_DELTAS for the node's whole recorded history, with its own accountant."""
    accountant = str(entries[-1]["accountant"])
    history = histories(entries)[-1]
    points = [[d, _finite(epsilon_by(OPACUS_NAMES[accountant], history, d))] for d in CURVE_DELTAS]
    return {"accountant": accountant, "points": points}


def _run(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {k: summary.get(k) for k in RUN_FIELDS} | {"transferability_noised": False}


def _rounds(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    keep = ("round", "cohort", "survivors", "probabilities", "accuracy", "aborted")
    return [{k: record.get(k) for k in keep} for record in (summary or {}).get("history", [])]
