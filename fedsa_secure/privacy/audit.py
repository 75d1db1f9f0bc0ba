"""`fedsa-secure audit PATH [--json] [--empirical]`: verify ledgers, recompute epsilon, write the report.

PATH is a run directory (every node's ledger under `nodes/`, checked against the aggregator's
summary, and report.json + report.html written), a node's state directory (the ledgers of its
record sets), or one ledger file (checked against its head file, and against the run's summary
when it sits in a run's `nodes/` folder). The exit status is 0 only if every ledger verifies,
every recorded epsilon is reproduced and no budget is exceeded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedsa_secure.config import load_node_config
from fedsa_secure.data import NodeData
from fedsa_secure.data.records import configured_records
from fedsa_secure.errors import LedgerError
from fedsa_secure.privacy.crosscheck import histories
from fedsa_secure.privacy.empirical import canary_audit
from fedsa_secure.privacy.ledger import head_path, verify_file
from fedsa_secure.privacy.report import NODES_DIR, build_report, write_files
from fedsa_secure.privacy.state import KEY_FILE, LEDGER_FILE, find_ledgers

EXIT_OK, EXIT_FAILED = 0, 1


def run_audit(path: Path, *, json_output: bool, empirical: bool, out: Path | None, nodes: Path | None = None) -> int:
    """Audit PATH, print the verdict (or the report as JSON), write report files; 0 if all is well, else 1.

    `nodes`: where the run's node state dirs are, when not under the run directory's `nodes/`.
    """
    path = Path(path)
    run_dir, ledgers = _subject(path)
    if nodes is not None:
        ledgers = find_ledgers(Path(nodes))
    extra = empirical_audit(run_dir, ledgers) if empirical else None
    report = build_report(run_dir, ledgers, extra)
    destination = out if out is not None else (path if path.is_dir() else None)
    written = write_files(report, Path(destination)) if destination is not None else None
    print(json.dumps(report, indent=2) if json_output else format_text(report, written))
    return EXIT_OK if report["verdict"]["ok"] else EXIT_FAILED


def _subject(path: Path) -> tuple[Path | None, dict[str, Path] | None]:
    """(run directory or None, explicit ledgers or None for "all of the run's")."""
    if path.is_dir():
        if (path / "summary.json").exists() or (path / NODES_DIR).is_dir():
            return path, None
        if (path / KEY_FILE).exists():  # a node's state_dir: one ledger per record set
            name = path.name
            return None, {f"{name}/{p.parent.name}": p for p in sorted(path.glob(f"*/{LEDGER_FILE}"))}
        raise LedgerError(f"{path} is neither a run directory (no summary.json, no nodes/), a node's state directory "
                          f"(no {KEY_FILE}) nor a ledger file")
    if path.suffix == ".jsonl" and (path.exists() or head_path(path).exists()):
        run_dir = path.parents[3] if len(path.parents) > 3 else None
        in_run = run_dir is not None and path.parents[2].name == NODES_DIR and (run_dir / "summary.json").exists()
        return (run_dir if in_run else None), {path.parents[1].name if in_run else path.stem: path}
    raise LedgerError(f"{path}: no such ledger file (*.jsonl), run directory or node state directory")


def empirical_audit(run_dir: Path | None, ledgers: dict[str, Path] | None) -> dict[str, Any]:
    """Canary audit of the node that spent the most, replaying its recorded mechanisms on its own records.

    The records are the node's as its config in the run directory names them (the demo writes
    config/<node>.toml); a node's own officer, who holds the records, runs it where they are.
    """
    if ledgers is None:
        ledgers = find_ledgers(run_dir / NODES_DIR) if run_dir else {}
    verified = {}
    for name, path in ledgers.items():
        entries, check = verify_file(path)
        if check.ok and entries:
            verified[name] = entries
    if not verified:
        raise LedgerError("the empirical audit needs at least one node with a verified, non-empty ledger")
    name = max(verified, key=lambda n: float(verified[n][-1]["epsilon"]))
    entries = verified[name]
    data = _node_records(run_dir, name.split("/")[0])
    last = entries[-1]
    described = last.get("records"), last.get("record", {}).get("shape")
    found = len(data.train), list(data.train.x.shape[1:])
    if described != found:
        raise LedgerError(
            f"{name}'s ledger describes {described[0]} records of shape {described[1]}, but its config gives {found[0]} "
            f"of shape {found[1]}: the canary audit must replay the mechanism on the node's own records"
        )
    result = canary_audit(
        data.train.x, data.train.y, history=histories(entries)[-1], max_grad_norm=float(last["max_grad_norm"]),
        delta=float(last["delta"]), accountant=str(last["accountant"]), node=name,
    )
    return result.as_dict()


def _node_records(run_dir: Path | None, name: str) -> NodeData:
    """The node's records, as its config names them (its own file, or a built-in dataset): the config in the run
    directory (`demo`), or beside it (a `fedsa-secure new` federation directory holding the run directory)."""
    places = [run_dir / "config" / f"{name}.toml", run_dir.parent / f"{name}.toml"] if run_dir is not None else []
    config = next((place for place in places if place.exists()), places[0] if places else None)
    if config is None or not config.exists():
        raise LedgerError(
            f"the empirical audit replays {name}'s mechanism on {name}'s own records, and finds no config of {name} "
            f"({config}); run it where the node's records are"
        )
    return configured_records(load_node_config(config))


def format_text(report: dict[str, Any], written: tuple[Path, Path] | None) -> str:
    """The guarantee first, what it does not cover in red, then a few lines per node; the report files carry the rest."""
    headline = report["headline"]
    lines = [headline["text"], *(f"  {line}" for line in headline["nodes"])]
    lines += [f"NOT COVERED: {item['text']}" for item in report["not_covered"] if item["severity"] == "red"]
    lines.append(f"({sum(i['severity'] == 'amber' for i in report['not_covered'])} stated assumptions and limits: see the report)")
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
