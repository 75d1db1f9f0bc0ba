"""`fedsa-secure audit PATH [--json] [--empirical]`: verify ledgers, recompute epsilon, write the report.

PATH is a run directory (every node's ledger, checked against the aggregator's summary, and
report.json + report.html written) or one ledger file (checked against its head file, and
against the run's summary when it sits in a run's `ledgers/` folder). The exit status is 0
only if every ledger verifies, every recorded epsilon is reproduced and no budget is exceeded.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from fedsa_secure.data import node_data
from fedsa_secure.errors import LedgerError
from fedsa_secure.privacy.crosscheck import histories
from fedsa_secure.privacy.empirical import canary_audit
from fedsa_secure.privacy.ledger import verify_file
from fedsa_secure.privacy.report import build_report, write_files

EXIT_OK, EXIT_FAILED = 0, 1


def run_audit(path: Path, *, json_output: bool, empirical: bool, out: Path | None) -> int:
    """Audit PATH, print the verdict (or the report as JSON), write report files; 0 if all is well, else 1."""
    path = Path(path)
    run_dir, ledgers = _subject(path)
    extra = empirical_audit(run_dir, ledgers) if empirical else None
    report = build_report(run_dir, ledgers, extra)
    destination = out if out is not None else (path if path.is_dir() else None)
    written = write_files(report, Path(destination)) if destination is not None else None
    print(json.dumps(report, indent=2) if json_output else format_text(report, written))
    return EXIT_OK if report["verdict"]["ok"] else EXIT_FAILED


def _subject(path: Path) -> tuple[Path | None, dict[str, Path] | None]:
    """(run directory or None, explicit ledgers or None for "all of the run's")."""
    if path.is_dir():
        if not (path / "summary.json").exists() and not (path / "ledgers").is_dir():
            raise LedgerError(f"{path} is neither a run directory (no summary.json, no ledgers/) nor a ledger file")
        return path, None
    if path.suffix == ".jsonl" and (path.exists() or path.with_name(f"{path.stem}.head.json").exists()):
        in_run = path.parent.name == "ledgers" and (path.parent.parent / "summary.json").exists()
        return (path.parent.parent if in_run else None), {path.stem: path}
    raise LedgerError(f"{path}: no such ledger file (*.jsonl) or run directory")


def empirical_audit(run_dir: Path | None, ledgers: dict[str, Path] | None) -> dict[str, Any]:
    """Canary audit of the node that spent the most, replaying its recorded mechanism on its own records."""
    if ledgers is None:
        ledgers = {p.stem: p for p in sorted((run_dir / "ledgers").glob("*.jsonl"))} if run_dir else {}
    verified = {}
    for name, path in ledgers.items():
        entries, check = verify_file(path)
        if check.ok and entries:
            verified[name] = entries
    if not verified:
        raise LedgerError("the empirical audit needs at least one node with a verified, non-empty ledger")
    name = max(verified, key=lambda n: float(verified[n][-1]["epsilon"]))
    entries = verified[name]
    data = node_data(name, _data_seed(run_dir, name))
    last = entries[-1]
    result = canary_audit(
        data.train.x, data.train.y, history=histories(entries)[-1], max_grad_norm=float(last["max_grad_norm"]),
        delta=float(last["delta"]), accountant=str(last["accountant"]), node=name,
    )
    return result.as_dict()


def _data_seed(run_dir: Path | None, name: str) -> int:
    """The data seed of the node's config (the demo writes config/<node>.toml), else the run's, else 0."""
    if run_dir is not None and (config := run_dir / "config" / f"{name}.toml").exists():
        return int(tomllib.loads(config.read_text(encoding="utf-8")).get("data", {}).get("seed", 0))
    if run_dir is not None and (student := run_dir / "student.json").exists():
        return int(json.loads(student.read_text(encoding="utf-8")).get("seed", 0))
    return 0


def format_text(report: dict[str, Any], written: tuple[Path, Path] | None) -> str:
    """A few lines per node for a terminal; the report files carry the rest."""
    lines = []
    for node in report["nodes"]:
        ledger = node["ledger"]
        status = "ok" if ledger["ok"] else f"FAILED at entry {ledger['first_bad']}"
        spent = "-" if node["epsilon"] is None else f"{node['epsilon']:.4f}"
        budget = "" if node["target_epsilon"] is None else f" of {node['target_epsilon']:g}"
        lines.append(f"{node['name']}: ledger {status} ({ledger['entries']} entries; {ledger['reason']}); "
                     f"epsilon {spent}{budget} at delta {node['delta']}")
        if (check := node["crosscheck"]) is not None:
            figures = ", ".join(f"{k} {_number(v)}" for k, v in check["figures"].items())
            lines.append(f"  cross-check: {figures}; largest disagreement {_number(check['largest_disagreement'])}"
                         f" ({check['largest_disagreement_with']})")
    if (e := report["empirical"]) is not None:
        lines.append(f"empirical ({e['node']}): epsilon >= {e['epsilon_lower_bound']:.3f} with {e['confidence']:.0%} confidence "
                     f"({e['correct']}/{e['guesses']} guesses on {e['canaries']} canaries); accounted "
                     f"{_number(e['accounted_epsilon'])}")
    if written is not None:
        lines.append(f"report: {written[0]} and {written[1]}")
    verdict = report["verdict"]
    lines.append("verdict: OK" if verdict["ok"] else "verdict: FAILED\n  " + "\n  ".join(verdict["problems"]))
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:.4f}"
