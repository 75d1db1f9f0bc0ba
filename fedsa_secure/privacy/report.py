"""The privacy audit report of a run: the guarantee first, then every node's ledger verified and recomputed.

`build_report` assembles the versioned JSON document (docs/report-schema.md) from the ledgers
(the authoritative record of what each node spent), the aggregator's summary (accuracy, cohorts,
and witnesses of each ledger), the cross-check and the epsilon(delta) curves. The statement
follows what NIST SP 800-226 and Ponomareva et al. 2023 (section 5.3) ask a DP claim to state:
the setting, the unit of privacy and adjacency, which data accesses and which releases are
covered (intermediate ones included), how it was accounted and under which assumptions, the
(epsilon, delta) per node, and the implementation hazards. What is not covered is listed first,
red where a guarantee does not hold, amber where it rests on a stated assumption.
`write_report` writes report.json and a self-contained report.html. Only whitelisted fields
are copied, so no key path or seed reaches a report.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from fedsa_secure.files import atomic_write
from fedsa_secure.privacy.accounting import SECURE_MODE_AVAILABLE, SECURE_MODE_REASON, epsilon_of, library_versions
from fedsa_secure.privacy.crosscheck import ACCOUNTANTS, OPACUS_NAMES, RECOMPUTE_TOLERANCE, crosscheck, epsilon_by, histories
from fedsa_secure.privacy.ledger import DECLARATION, LedgerHead, charges, head_path, read_head, verify_file
from fedsa_secure.privacy.report_html import render_html
from fedsa_secure.privacy.state import find_ledgers

SCHEMA = "fedsa-secure/privacy-report"
SCHEMA_VERSION = 2  # 2: epsilon covers the teacher; headline and statement restructured
NODES_DIR = "nodes"  # a run directory's node state dirs (the demo's layout): nodes/<node>/<fingerprint>/ledger.jsonl
CURVE_DELTAS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)
EPSILON_MATCH = 1e-9  # the aggregator stores the float the node sent; equal up to JSON round-trip
MECHANISM_FIELDS = (
    "seq", "kind", "round", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "delta", "accountant", "epsilon",
)
RUN_FIELDS = ("method", "rounds", "student_accuracy", "scratch_accuracy", "probe_size", "test_size")

RELEASES: list[dict[str, str]] = [
    {"release": "the teacher's weights", "to": "nobody: they stay on the node",
     "covered_by": "DP-SGD on the node's labelled records, charged to its ledger (entry of kind 'teacher') before "
                   "anything computed with the teacher leaves"},
    {"release": "transferability score (one number per selection request, at most one per round)", "to": "the aggregator",
     "covered_by": "post-processing of the DP teacher on the aggregator's own probe images (and, for fedsa, the "
                   "student's saliency maps): no further cost"},
    {"release": "output map (fedsa+)", "to": "nobody: it stays on the node",
     "covered_by": "post-processing of the DP teacher on the aggregator's labelled probe set"},
    {"release": "proxy update (each round the node trains)", "to": "the aggregator, masked",
     "covered_by": "DP-SGD on the node's records with the DP teacher's targets, charged to the ledger (entry of kind "
                   "'distillation') before it leaves; every round's update is covered, not only the final student"},
    {"release": "privacy status (epsilon, budget, ledger entry count and head hash)", "to": "the aggregator",
     "covered_by": "computed from the ledger alone (mechanism parameters, public)"},
    {"release": "secure-aggregation messages (keys, sealed shares, signatures, the masked and packed update)",
     "to": "the aggregator and, sealed, other nodes",
     "covered_by": "fresh keys and the DP update; the aggregator learns only the survivors' sum"},
    {"release": "declines and aborts, with their reasons", "to": "the aggregator",
     "covered_by": "the ledger (budget) and checks on what the aggregator sent: no record-dependent content"},
]

STATEMENT: dict[str, Any] = {
    "dp_setting": (
        "Each node applies differential privacy to its own records on its own machine, before anything leaves it: "
        "the guarantee holds against the aggregator, the other nodes and whoever obtains the student, and does not "
        "rely on secure aggregation, which hides each node's update from the aggregator on top."
    ),
    "adjacency": (
        "Add or remove one record of one node's data (add/remove adjacency). The guarantee is per node: each "
        "node's figure bounds what all of its releases together reveal about any one of its records."
    ),
    "threat_model": (
        "Anyone who sees what a node releases, in every round, even in the clear, and knows every other record: "
        "the aggregator, the other nodes, whoever obtains the student. The node's own machine is trusted."
    ),
    "data_accesses": [
        "The teacher's training on the node's labelled records: DP-SGD, in the node's ledger.",
        "Every distillation round on the node's records: DP-SGD, in the same ledger; the rounds compose with the "
        "teacher's training in one accountant (adaptive composition).",
        "Nothing else reads the records: no statistic, score, log line or file computed from them leaves the node "
        "except through these two mechanisms.",
    ],
    "releases": RELEASES,
    "accounting_assumptions": [
        "Poisson sampling, as Opacus's DPDataLoader implements it; each node's number of records is public (it sets "
        "the sample rate the ledger records).",
        "The budget belongs to the records: a restarted node replays its ledger, and a second run on the same records "
        "continues the same ledger. Records a node also holds in another record set (another ledger) are charged in "
        "both, and their epsilons add up.",
        "Hyper-parameters (learning rates, epochs, clipping norms) were chosen on the built-in benchmark data, not on "
        "any node's records; tuning them on a node's own records is a further access this figure does not cover.",
    ],
}

NOT_COVERED: list[dict[str, str]] = [
    {"severity": "amber", "text": "Opacus secure_mode is off: " + SECURE_MODE_REASON + " (NIST SP 800-226: randomness hazard.)"},
    {"severity": "amber", "text": "The noise is added in floating point; attacks on floating-point noise samplers "
                                  "(Mironov 2012) are not mitigated. (NIST SP 800-226: floating-point hazard.)"},
    {"severity": "amber", "text": "The aggregator's probe set (its labelled records, sent to every node) is the "
                                  "aggregator's own data and is not protected."},
    {"severity": "amber", "text": "Which rounds a node trained in or declined, and its number of records, are "
                                  "visible; declines depend only on the ledger, not on the records."},
]


def build_report(run_dir: Path | None, ledgers: dict[str, Path] | None = None, empirical: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report document for a run directory, or for explicit ledgers (then `run_dir` may be None)."""
    summary = _read_json(run_dir / "summary.json") if run_dir is not None else None
    if ledgers is None:
        ledgers = _run_ledgers(run_dir, summary) if run_dir is not None else {}
    nodes = [_node(name, path, summary, run_dir) for name, path in sorted(ledgers.items())]
    not_covered = _red_items(nodes) + NOT_COVERED
    problems = [f"{n['name']}: {p}" for n in nodes for p in n["problems"]]
    problems += [item["text"] for item in not_covered if item["severity"] == "red" and not item["text"].endswith(_SEE_BELOW)]
    accountants = sorted({n["accountant"] for n in nodes if n["accountant"]})
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "generator": {"fedsa_secure": version("fedsa-secure"), "libraries": library_versions()},
        "subject": {"kind": "run" if summary is not None else "ledgers", "name": run_dir.name if run_dir else None},
        "headline": _headline(nodes, not_covered),
        "not_covered": not_covered,
        "verdict": {"ok": not problems, "problems": problems},
        "statement": STATEMENT | {"unit_of_privacy": {n["name"]: n["unit"] for n in nodes}},
        "secure_mode": {"available": SECURE_MODE_AVAILABLE, "reason": SECURE_MODE_REASON},
        "accounting": {
            "accountants": accountants,
            "crosscheck_accountants": list(ACCOUNTANTS),
            "recompute_tolerance": RECOMPUTE_TOLERANCE,
            "mechanism": "DP-SGD (Opacus), Poisson sampling, per-sample clipping to max_grad_norm, Gaussian noise; "
                         "the teacher's training and the rounds composed in one accountant per node",
        },
        "run": _run(summary),
        "rounds": _rounds(summary),
        "nodes": nodes,
        "empirical": empirical,
    }


def write_report(run_dir: Path, ledgers: dict[str, Path] | None = None) -> tuple[Path, Path]:
    """Write report.json and report.html into the run directory (launch calls this at its end); `ledgers`: the nodes'
    ledgers by name, when they are not under the run directory's nodes/."""
    return write_files(build_report(Path(run_dir), ledgers), Path(run_dir))


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
    """Every ledger under the run's node state dirs, plus every node the summary names (a node with none is still audited)."""
    found = find_ledgers(run_dir / NODES_DIR)
    for node in (summary or {}).get("nodes", []):
        if not any(key == node["name"] or key.startswith(f"{node['name']}/") for key in found):
            found[node["name"]] = run_dir / NODES_DIR / node["name"] / "ledger.jsonl"  # absent: reported as such
    return found


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an unbounded epsilon is written as null and explained by the problem list."""
    return value if value is not None and math.isfinite(value) else None


def _number(value: Any) -> float | None:
    """A ledger figure as a float, None if it is not a finite number (the problem list says why)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _node(name: str, path: Path, summary: dict[str, Any] | None, run_dir: Path | None) -> dict[str, Any]:
    reported: dict[str, Any] = next((n for n in (summary or {}).get("nodes", []) if n["name"] == name.split("/")[0]), {})
    anchors = _anchors(name, path, summary, reported)
    entries, verification = verify_file(path, anchors)
    problems = [] if verification.ok else [f"ledger: {verification.reason}"]
    figures_ok = verification.ok and not (bad := _unreadable(charges(entries)))
    if verification.ok and bad:
        problems += bad
    problems += _epsilon_witness(name, entries, summary) if figures_ok else []
    check = crosscheck(entries) if figures_ok else None
    problems += check.problems if check else []
    target = _target(entries, reported)
    for entry in entries if figures_ok else []:
        if target is not None and float(entry["epsilon"]) > target:
            problems.append(f"entry {entry['seq']} (round {entry['round']}) spends epsilon {entry['epsilon']} > budget {target}")
    last = entries[-1] if entries and figures_ok else None
    epsilon = float(last["epsilon"]) if last else (0.0 if not entries else None)
    charged = charges(entries)
    last_charge = charged[-1] if charged and figures_ok else None
    return {
        "name": name,
        "ledger": {
            "file": str(path.relative_to(run_dir)) if run_dir and path.is_relative_to(run_dir) else path.name,
            "present": path.exists(),
            "entries": verification.entries,
            "ok": verification.ok,
            "first_bad": verification.first_bad,
            "reason": verification.reason,
            "head": entries[-1].get("hash") if entries else None,
            "anchors": [a.as_dict() | {"source": a.source} for a in anchors],
        },
        "unit": _unit(name, entries),
        "target_epsilon": target,
        "delta": _number(last_charge["delta"]) if last_charge else _number(reported.get("delta")),
        "accountant": str(last_charge["accountant"]) if last_charge else None,
        "epsilon": _finite(epsilon),
        "remaining_epsilon": None if target is None or epsilon is None else _finite(target - epsilon),
        "teacher": _teacher(entries, target) if figures_ok else None,
        "rounds_trained": sum(e.get("kind") == "distillation" for e in entries),
        "charged_not_used": _charged_not_used(name, entries, summary),
        "declines": reported.get("declines"),
        "versions": {str(k): str(v) for k, v in last["versions"].items()} if last and isinstance(last.get("versions"), dict) else None,
        "mechanism": [{k: entry.get(k) for k in MECHANISM_FIELDS} | {"epsilon": _number(entry.get("epsilon"))}
                      for entry in entries] if figures_ok else [],
        "crosscheck": _crosscheck_dict(check),
        "epsilon_delta_curve": _curve(entries) if check is not None and check.ok else None,
        "problems": problems,
    }


def _charged_not_used(name: str, entries: list[dict[str, Any]], summary: dict[str, Any] | None) -> list[int] | None:
    """Rounds this node was charged for whose update never reached the student (the round was aborted or abandoned by a
    restarted aggregator, or the node dropped out before unmasking). They count in its epsilon all the same: the
    update was computed and may have left. None without the run's summary."""
    if summary is None:
        return None
    used = {row["round"] for row in summary.get("history", [])
            if not row.get("aborted") and name.split("/")[0] in (row.get("survivors") or [])}
    unused = []
    for entry in entries:
        if entry.get("kind") == "distillation" and isinstance(entry.get("round"), int):
            if entry["round"] in used:
                used.discard(entry["round"])  # one charge per round is the one the student used
            else:
                unused.append(entry["round"])
    return unused


def _unreadable(entries: list[dict[str, Any]]) -> list[str]:
    """Entries whose mechanism figures are not finite non-negative numbers: reported, never computed with."""
    problems = []
    for entry in entries:
        for key in ("noise_multiplier", "sample_rate", "steps", "max_grad_norm", "delta", "epsilon"):
            value = _number(entry.get(key))
            if value is None or value < 0:
                problems.append(f"entry {entry.get('seq')} records {key} = {entry.get(key)!r}, not a finite non-negative number")
    return problems


def _unit(name: str, entries: list[dict[str, Any]]) -> str:
    """The unit of privacy in this node's own terms: what one of its records is, as its ledger describes them."""
    described = next((e for e in entries if isinstance(e.get("record"), dict)), None)
    if described is None:
        return f"one record of {name}'s private data (its ledger does not describe the records)"
    record, count = described["record"], described.get("records")
    shape = "x".join(str(d) for d in record.get("shape", [])) or "scalar"
    label = " with its label" if record.get("labelled") else ""
    of = f" of its {count:,} records" if isinstance(count, int) else ""
    return f"one record{of}: a {record.get('dtype', '')} array of shape {shape}{label}"


def _teacher(entries: list[dict[str, Any]], target: float | None) -> dict[str, Any] | None:
    """Where the node's teacher came from and what it spent on its own (the split between teacher and rounds)."""
    teachers = [e for e in entries if e.get("kind") in ("teacher", DECLARATION)]
    if not teachers:
        return None
    last = teachers[-1]
    alone = 0.0
    if last.get("kind") == "teacher":
        alone = epsilon_of([(float(last["noise_multiplier"]), float(last["sample_rate"]), int(last["steps"]))],
                           float(last["delta"]), str(last["accountant"]))
    return {
        "provenance": str(last.get("provenance", "train")),  # train, dp (both charged), public or non-private
        "entries": [t["seq"] for t in teachers],
        "epsilon_alone": alone,
        "share_of_budget": None if not target else alone / target,
        "trainings": sum(t.get("kind") == "teacher" for t in teachers),
        "digest": last.get("teacher_sha256"),
    }


_SEE_BELOW = "the audit found problems (listed below); its figures cannot be relied on until they are explained."


def _red_items(nodes: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Where the printed figure does not bound what a node's releases reveal: first in the report, in red."""
    items = []
    for node in nodes:
        if node["problems"]:
            items.append({"severity": "red", "text": f"{node['name']}: {_SEE_BELOW}"})
        elif node["rounds_trained"] and node["teacher"] is None:
            items.append({"severity": "red", "text": (
                f"{node['name']}: its ledger records no DP training of its teacher. If that teacher was trained on "
                "these records without DP, one record moves every distillation target, and the epsilon printed for "
                f"{node['name']} does not bound what its releases reveal about that record.")})
        elif node["teacher"] is not None and node["teacher"]["provenance"] == "non-private":
            items.append({"severity": "red", "text": (
                f"{node['name']}: its teacher was declared trained on its records without DP. Those records are NOT "
                f"protected: one record moves every distillation target, whatever epsilon is printed for {node['name']}.")})
        elif node["teacher"] is not None and node["teacher"]["provenance"] == "public":
            items.append({"severity": "amber", "text": (
                f"{node['name']}: its teacher was declared trained on data outside its protected records (public); "
                "the figure covers the records only if that declaration is true.")})
    return items


def _headline(nodes: list[dict[str, Any]], not_covered: list[dict[str, str]]) -> dict[str, Any]:
    """The guarantee in one sentence per node, as the report states it first."""
    lines = []
    for node in nodes:
        if node["epsilon"] is None:
            lines.append(f"{node['name']}: no finite epsilon (see the problems below)")
            continue
        teacher, rounds = node["teacher"], node["rounds_trained"]
        if teacher is None:
            split = f"{rounds} rounds, no teacher training recorded"
        elif teacher["provenance"] in ("train", "dp"):
            split = f"its DP teacher {teacher['epsilon_alone']:.2f} on its own, {rounds} rounds composed on top"
        else:
            split = f"its teacher declared {teacher['provenance']}, {rounds} rounds"
        lines.append(f"{node['name']}: epsilon {node['epsilon']:.2f} at delta {node['delta']:g} for {node['unit']} "
                     f"({split}; budget {node['target_epsilon']:g})")
    holds = not any(item["severity"] == "red" for item in not_covered)
    summary = ("Every node's releases are differentially private for each of its records, teacher training included, "
               "against everyone, the aggregator included:" if holds else
               "The guarantee does NOT hold as printed for every node; read the red items first:")
    return {"holds": holds, "text": summary, "nodes": lines}


def _anchors(name: str, path: Path, summary: dict[str, Any] | None, reported: dict[str, Any]) -> list[LedgerHead]:
    """Every witness of this ledger: its sidecar, and what the node told the aggregator (count, and heads if sent)."""
    anchors = [head] if (head := read_head(head_path(path))) is not None else []
    node = name.split("/")[0]
    if "ledger_entries" in reported:
        anchors.append(LedgerHead(int(reported["ledger_entries"]), reported.get("ledger_head"), "summary.json node status"))
    for record in (summary or {}).get("history", []):
        if (seen := record.get("ledger_heads", {}).get(node)) is not None:
            anchors.append(LedgerHead(int(seen["entries"]), seen.get("head"), f"summary.json round {record['round']}"))
    return anchors


def _epsilon_witness(name: str, entries: list[dict[str, Any]], summary: dict[str, Any] | None) -> list[str]:
    """Each epsilon the aggregator was told must be one the ledger recorded: a lowered figure shows here."""
    recorded = [float(e["epsilon"]) for e in entries]
    problems = []
    for record in (summary or {}).get("history", []):
        told = _number(record.get("epsilon", {}).get(name.split("/")[0]))
        if told and not any(abs(told - eps) <= EPSILON_MATCH * max(1.0, told) for eps in recorded):
            problems.append(
                f"the aggregator recorded epsilon {told:.6f} after round {record['round']}, "
                "but no ledger entry has it (entry edited or removed)"
            )
            break
    return problems


def _target(entries: list[dict[str, Any]], reported: dict[str, Any]) -> float | None:
    if entries and "target_epsilon" in entries[-1]:
        return _number(entries[-1]["target_epsilon"])
    return _number(reported.get("target_epsilon")) or None


def _crosscheck_dict(check: Any) -> dict[str, Any] | None:
    if check is None:
        return None
    data: dict[str, Any] = check.as_dict()
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
    return {k: summary.get(k) for k in RUN_FIELDS} | {
        "transferability": "post-processing of each node's DP teacher on the aggregator's probe set (no further cost)"
    }


def _rounds(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    keep = ("round", "cohort", "survivors", "probabilities", "accuracy", "aborted")
    return [{k: record.get(k) for k in keep} for record in (summary or {}).get("history", [])]
