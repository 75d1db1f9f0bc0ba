"""`fedsa-secure launch DIR`: a federation directory's parties on this machine, one OS process each, over mutual TLS.

It reads DIR/aggregator.toml and the node configs it lists (DIR/<node>.toml), checks them all
before any party starts, creates the federation's keys if there are none, starts the aggregator on
a free local port and then the nodes, relays the per-round progress, and ends with the summary
and the privacy report. The configs themselves are what `aggregator|node --config` runs elsewhere.
Each launch is a new run (a finished one moves aside); a run a crash interrupted is resumed.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from fedsa_secure.config import AggregatorConfig, NodeConfig, load_aggregator_config, load_node_config
from fedsa_secure.crypto.pki import AGGREGATOR as AGGREGATOR_ROLE
from fedsa_secure.crypto.pki import NODE, create_ca, issue_certificate
from fedsa_secure.errors import ConfigError, FedsaError
from fedsa_secure.privacy.report import write_report
from fedsa_secure.privacy.state import find_ledgers

HOSTS = ("localhost", "127.0.0.1")
LOCAL = "127.0.0.1"


def launch(directory: Path, echo: TextIO = sys.stdout, startup_timeout: float = 120.0) -> dict[str, Any]:
    """Run the federation in `directory` to its end; returns the aggregator's summary with the report's verdict."""
    aggregator, nodes = read_federation(directory)
    check_node_inputs(nodes)
    ensure_keys(aggregator, nodes)
    run_dir = Path(aggregator.aggregator.run_dir)
    keep_finished_run(run_dir, echo)
    logs, port_file = run_dir / "logs", run_dir / "aggregator.port"
    logs.mkdir(parents=True, exist_ok=True)
    port_file.unlink(missing_ok=True)
    processes: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that `finally` stops every party we started
    try:
        server = _spawn(["aggregator", "--config", str(directory / "aggregator.toml"), "--listen", f"{LOCAL}:0",
                         "--port-file", str(port_file)], logs / "aggregator.log", relay_stdout=True)
        processes.append(server)
        port = _wait_for_port(port_file, server, startup_timeout, logs)
        for name in nodes:
            processes.append(_spawn(["node", "--config", str(directory / f"{name}.toml"), "--aggregator", f"{LOCAL}:{port}"],
                                    logs / f"{name}.log"))
        assert server.stdout is not None
        for line in server.stdout:
            print(line.rstrip(), file=echo, flush=True)
        if server.wait() != 0:
            raise FedsaError(f"the aggregator failed (exit {server.returncode}); its log and the nodes' are in {logs}")
        for process in processes[1:]:
            with contextlib.suppress(subprocess.TimeoutExpired):  # told the run is over; stopped below if not gone
                process.wait(timeout=30)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        signal.signal(signal.SIGTERM, previous)
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    # The privacy officer's report, from the ledgers the nodes wrote (`fedsa-secure audit` redoes it).
    states = sorted({Path(config.node.state_dir).parent.resolve() for config in nodes.values()})
    ours = {Path(config.node.state_dir).name for config in nodes.values()}
    ledgers = {name: path for parent in states for name, path in find_ledgers(parent).items() if name.split("/")[0] in ours}
    report_json, report_html = write_report(run_dir, ledgers)
    report = json.loads(report_json.read_text())
    summary["report"] = str(report_html.resolve())
    summary["privacy_verified"] = report["verdict"]["ok"]
    summary["guarantee"] = guarantee_line(report)
    elsewhere = len(states) == 1 and states[0] != (run_dir / "nodes").resolve()  # audit's default: <run_dir>/nodes
    summary["audit_command"] = f"fedsa-secure audit {summary['run_dir']}" + (f" --nodes {states[0]}" if elsewhere else "")
    return summary


def keep_finished_run(run_dir: Path, echo: TextIO) -> None:
    """Each launch is a new run: a finished one in the run directory moves to `<run_dir>-<its end time>` (an unfinished
    one stays, and the aggregator resumes it)."""
    summary = run_dir / "summary.json"
    if summary.exists():
        kept = run_dir.with_name(f"{run_dir.name}-{datetime.fromtimestamp(summary.stat().st_mtime):%Y%m%d-%H%M%S}")
        run_dir.rename(kept)
        print(f"the previous run is kept in {kept}", file=echo, flush=True)


def read_federation(directory: Path) -> tuple[AggregatorConfig, dict[str, NodeConfig]]:
    """Every party's config, checked before any party starts: a bad one stops the launch with its file and key named."""
    if not (directory / "aggregator.toml").exists():
        raise ConfigError(f"{directory} has no aggregator.toml: create a federation directory with `fedsa-secure new {directory}`")
    aggregator = load_aggregator_config(directory / "aggregator.toml")
    missing = [name for name in aggregator.federation.nodes if not (directory / f"{name}.toml").exists()]
    if missing:
        raise ConfigError(f"{directory / 'aggregator.toml'} lists nodes {missing} with no config {directory}/<name>.toml")
    nodes = {name: load_node_config(directory / f"{name}.toml") for name in aggregator.federation.nodes}
    for name, config in nodes.items():
        if config.node.name != name:
            raise ConfigError(f"{directory / f'{name}.toml'}: node.name is {config.node.name!r}; the aggregator lists it as {name!r}")
    return aggregator, nodes


def check_node_inputs(nodes: dict[str, NodeConfig]) -> None:
    """Each node's own records, teacher file and student code, tried here before any party starts (a node that failed
    on them after the aggregator started would leave it waiting for its join)."""
    from fedsa_secure.data.records import load_records
    from fedsa_secure.fedsa.teacher import load_teacher_file
    from fedsa_secure.models import make_student, use_student

    for name, config in nodes.items():
        try:
            if config.node.student is not None:
                make_student(2, 0, use_student(config.node.student))
            if config.data.records is not None:
                data = load_records(config.data.records, name, labelled_by_teacher=config.teacher.file is not None)
                if config.teacher.file is not None:
                    load_teacher_file(config.teacher.file, data, config.teacher.factory)
        except ConfigError as error:
            raise ConfigError(f"{name}: {error}") from None


def ensure_keys(aggregator: AggregatorConfig, nodes: dict[str, NodeConfig]) -> None:
    """A federation CA and a certificate per party where the configs point, unless they exist (then they are used)."""
    ca_cert = Path(aggregator.tls.ca_cert)
    ca_key = ca_cert.with_suffix(".key")
    parties = [("aggregator", aggregator.tls, AGGREGATOR_ROLE), *((name, c.tls, NODE) for name, c in nodes.items())]
    if not ca_cert.exists():
        ca_cert.parent.mkdir(parents=True, exist_ok=True)
        create_ca(ca_cert.parent)
    for name, tls, role in parties:
        if Path(tls.ca_cert).resolve() != ca_cert.resolve():
            raise ConfigError(f"{name}'s tls.ca_cert ({tls.ca_cert}) is not the aggregator's ({ca_cert}): one federation, one CA")
        if Path(tls.cert).exists() and Path(tls.key).exists():
            continue
        if not ca_key.exists():
            raise ConfigError(f"{name} has no certificate at {tls.cert} and this machine has no CA key ({ca_key}) to issue one")
        cert, key = issue_certificate(ca_cert, ca_key, name, Path(tls.cert).parent, hosts=HOSTS, role=role)
        if (cert, key) != (Path(tls.cert), Path(tls.key)):
            raise ConfigError(f"{name}'s certificate and key must be named {name}.pem and {name}.key in one directory for "
                              f"launch to create them; the config says {tls.cert} and {tls.key}")


def _spawn(args: list[str], log_path: Path, relay_stdout: bool = False) -> subprocess.Popen:
    """Start one party; its log (stderr, verbose) goes to a file, its stdout to us or the same file."""
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, "-m", "fedsa_secure.cli", "-v", *args],
        stdout=subprocess.PIPE if relay_stdout else log, stderr=log, text=True,
    )


def _wait_for_port(port_file: Path, process: subprocess.Popen, timeout: float, logs: Path) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if process.poll() is not None:
            lines = (logs / "aggregator.log").read_text(errors="replace").strip().splitlines() or ["(no output)"]
            raise FedsaError(f"the aggregator exited before it started listening: {lines[-1]} (its log: {logs / 'aggregator.log'})")
        time.sleep(0.1)
    raise FedsaError(f"the aggregator did not start listening within {timeout:.0f}s")


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
