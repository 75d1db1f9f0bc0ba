"""`fedsa-secure demo`: a whole federation on this machine, one OS process per party.

It does by script what examples/README.md does by hand: make a CA and certificates, write
one TOML file per party, start the aggregator, then the nodes, relay the aggregator's
per-round progress and print the result table.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from fedsa_secure.config import DemoOptions
from fedsa_secure.crypto.pki import AGGREGATOR as AGGREGATOR_ROLE
from fedsa_secure.crypto.pki import NODE, create_ca, issue_certificate
from fedsa_secure.data import federation
from fedsa_secure.errors import FedsaError
from fedsa_secure.privacy.report import write_report

AGGREGATOR = "aggregator"
NODES_DIR = "nodes"  # each node's state_dir (ledger and DP teacher) is <run_dir>/nodes/<name>
HOSTS = ("localhost", "127.0.0.1")


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def toml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, (Path, str)):
        return json.dumps(str(value))
    return repr(value)


def write_toml(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def make_keys(keys_dir: Path, names: list[str]) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """A fresh federation CA and one certificate per party (the demo plays every party)."""
    ca_cert, ca_key = create_ca(keys_dir)
    issued = {name: issue_certificate(ca_cert, ca_key, name, keys_dir, hosts=HOSTS,
                                      role=AGGREGATOR_ROLE if name == AGGREGATOR else NODE)
              for name in names}
    return ca_cert, issued


def write_configs(run_dir: Path, options: DemoOptions, ca: Path, certs: dict[str, tuple[Path, Path]]) -> tuple[Path, dict[str, Path]]:
    config_dir = run_dir / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    testing = {"dump_dir": options.dump_dir.resolve()} if options.dump_dir else {}
    cert, key = certs[AGGREGATOR]
    names = list(federation(options.dataset).nodes)
    aggregator = write_toml(config_dir / "aggregator.toml", {
        "aggregator": {"listen": "127.0.0.1:0", "run_dir": run_dir.resolve(), "port_file": (run_dir / "aggregator.port").resolve()},
        "federation": {"nodes": names, "method": options.method, "dataset": options.dataset,
                       "seed": options.seed, "rounds": options.rounds},
        "tls": {"ca_cert": ca.resolve(), "cert": cert.resolve(), "key": key.resolve()},
        "testing": testing,
    })
    nodes = {}
    for name in names:
        cert, key = certs[name]
        nodes[name] = write_toml(config_dir / f"{name}.toml", {
            # A fresh privacy state per demo run: each demo is a new federation of made-up parties.
            "node": {"name": name, "aggregator": "127.0.0.1:PORT", "state_dir": (run_dir / NODES_DIR / name).resolve(),
                     "server_name": AGGREGATOR},
            "data": {"dataset": options.dataset, "seed": options.seed},
            "privacy": {"target_epsilon": options.target_epsilon, "delta": options.delta,
                        "teacher_share": options.teacher_share,
                        "planned_rounds": options.planned_rounds or options.rounds, "local_epochs": options.local_epochs},
            "tls": {"ca_cert": ca.resolve(), "cert": cert.resolve(), "key": key.resolve()},
            "testing": testing,
        })
    return aggregator, nodes


def _spawn(args: list[str], log_path: Path, relay_stdout: bool = False) -> subprocess.Popen:
    """Start one party; its log (stderr, verbose) goes to a file, its stdout to us or the same file."""
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, "-m", "fedsa_secure.cli", "-v", *args],
        stdout=subprocess.PIPE if relay_stdout else log, stderr=log, text=True,
    )


def _wait_for_port(port_file: Path, process: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if process.poll() is not None:
            raise FedsaError(f"the aggregator exited before it started listening; see {port_file.parent / 'logs'}")
        time.sleep(0.1)
    raise FedsaError(f"the aggregator did not start listening within {timeout:.0f}s")


def run_demo(options: DemoOptions, echo: TextIO = sys.stdout) -> dict[str, Any]:
    run_dir = options.out or default_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"run directory: {run_dir}", file=echo, flush=True)
    print(f"each node keeps its ledger and DP teacher in {run_dir / NODES_DIR}/<node>: a fresh privacy budget for this "
          "demo's made-up parties (a deployed node keeps its state_dir across runs)", file=echo, flush=True)
    ca, certs = make_keys(run_dir / "keys", [AGGREGATOR, *federation(options.dataset).nodes])
    aggregator_toml, node_tomls = write_configs(run_dir, options, ca, certs)
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    processes: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that `finally` stops every party we started
    try:
        aggregator = _spawn(["aggregator", "--config", str(aggregator_toml)], logs / "aggregator.log", relay_stdout=True)
        processes.append(aggregator)
        port = _wait_for_port(run_dir / "aggregator.port", aggregator, options.startup_timeout)
        for name, path in node_tomls.items():
            path.write_text(path.read_text().replace("127.0.0.1:PORT", f"127.0.0.1:{port}"))
            processes.append(_spawn(["node", "--config", str(path)], logs / f"{name}.log"))
        assert aggregator.stdout is not None
        for line in aggregator.stdout:
            print(line.rstrip(), file=echo, flush=True)
        if aggregator.wait() != 0:
            raise FedsaError(f"the aggregator failed (exit {aggregator.returncode}); its log and the nodes' are in {logs}")
        for process in processes[1:]:
            process.wait(timeout=30)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        signal.signal(signal.SIGTERM, previous)
    summary = json.loads((run_dir / "summary.json").read_text())
    # The privacy officer's report, from the ledgers the nodes wrote (`fedsa-secure audit` redoes it).
    report_json, report_html = write_report(run_dir)
    report = json.loads(report_json.read_text())
    summary["report"] = str(report_html.resolve())
    summary["privacy_verified"] = report["verdict"]["ok"]
    summary["guarantee"] = guarantee_line(report)
    return summary


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def guarantee_line(report: dict[str, Any]) -> str:
    """The audited guarantee in one line, as the report states it first."""
    if not report["headline"]["holds"]:
        return "privacy: NOT guaranteed as printed for every node; read the red items of the report first"
    epsilons = [n["epsilon"] for n in report["nodes"] if n["epsilon"] is not None]
    deltas = [n["delta"] for n in report["nodes"] if n["delta"] is not None]
    return (f"privacy: every node's records at epsilon <= {max(epsilons, default=0.0):.2f}, delta {max(deltas, default=0.0):.0e}, "
            "its teacher's training included, against everyone, the aggregator included (audited: report.html)")


def format_table(summary: dict[str, Any]) -> str:
    rows = [
        f"dataset {summary['dataset']}, {summary['probe_size']} probe labels, {summary['test_size']} test records",
        f"{'method':<34} {'test accuracy':>13}",
        f"{'Scratch (probe labels only)':<34} {summary['scratch_accuracy']:>13.4f}",
        f"{summary['method'] + ' (DP + SecAgg + mTLS)':<34} {summary['student_accuracy']:>13.4f}",
        _difference_line(summary["student_minus_scratch"], summary["test_size"]),
        summary["guarantee"],
        "",
        f"{'node':<10} {'epsilon':>8} {'budget':>8} {'delta':>8} {'rounds trained':>15}",
    ]
    rows += [
        f"{n['name']:<10} {n['epsilon']:>8.3f} {n['target_epsilon']:>8.2f} {n['delta']:>8.0e} {n['rounds_trained']:>15}"
        for n in summary["nodes"]
    ]
    return "\n".join(rows)


def _difference_line(difference: dict[str, float], test_size: int) -> str:
    points = {k: 100 * v for k, v in difference.items()}
    return (
        f"student - Scratch: {points['difference']:+.1f} points on these {test_size} test records "
        f"(exact 95% interval {points['low']:+.1f} to {points['high']:+.1f}; a rerun adds DP noise on top)"
    )
