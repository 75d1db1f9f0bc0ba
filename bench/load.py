"""Load: one aggregator, many simulated nodes, full secure rounds over gRPC with mutual TLS.

`python -m bench.load [--json] [--nodes 25 50 100 200] [--rounds 2]`

For each federation size n, the aggregator runs in its own process (`rounds.Federation` over the
real `FederationServer`, the built-in CNN student, `fedsa+`, every node in every cohort) and n
simulated nodes run as threads of one driver process, each a real gRPC client with its own
certificate and a real secure-aggregation client (SecAgg+ graph, signed keys), sending a random
update in place of DP-SGD. Reported per size: the mean round time (secure aggregation of every
node's update, adaptation excluded), the aggregator's peak resident memory and peak OS threads
(sampled from /proc every 50 ms) and CPU time, and, measured side by side in the same run, how
each grows from the smallest size to the largest against the growth in nodes. The simulated nodes
share the machine (and one Python process) with the aggregator: round time includes their work.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedsa_secure import messages as msg
from fedsa_secure.config import NodeSection
from fedsa_secure.crypto import TrustAnchor
from fedsa_secure.crypto.pki import AGGREGATOR, NODE, create_ca, issue_certificate
from fedsa_secure.secagg import messages as sa
from fedsa_secure.secagg.client import SecAggClient
from fedsa_secure.secagg.identity import Credentials
from fedsa_secure.transport.tls import TlsFiles

SIZES = (25, 50, 100, 200)


class SimulatedNode:
    """A node's side of the protocol without its learning: a constant score, a random update, real secure aggregation."""

    def __init__(self, name: str, credentials: Credentials, seed: int) -> None:
        self.name, self._credentials = name, credentials
        self._rng = np.random.default_rng(seed)
        self._client: SecAggClient | None = None
        self._update: np.ndarray | None = None

    def join(self) -> msg.Join:
        return msg.Join(self._status(0))

    def rejoin(self) -> msg.Join:
        return self.join()

    def _status(self, number: int) -> msg.PrivacyStatus:
        return msg.PrivacyStatus(round=number, epsilon=0.0, delta=1e-5, target_epsilon=8.0, rounds_trained=0,
                                 fits_next_round=True, ledger_entries=0, ledger_head="")

    def respond(self, request: msg.ServerMessage) -> tuple[int, list[msg.ClientMessage]]:
        number = getattr(request, "round", 0)
        match request:
            case msg.OutputSelectRequest():
                return number, [msg.SelectReply(round=number, transferability=0.0), self._status(number)]
            case msg.TrainRequest():
                self._client = SecAggClient(self.name, request.secagg, self._credentials)
                self._update = self._rng.normal(0.0, 1e-3, request.secagg.vector_length).astype(np.float32)
                return number, [self._client.advertise()]
            case sa.Roster():
                assert self._client is not None
                return number, [self._client.share_keys(request)]
            case sa.ShareDelivery():
                assert self._client is not None and self._update is not None
                return number, [self._client.masked_input(request, self._update)]
            case sa.ConsistencyCheckRequest():
                assert self._client is not None
                return number, [self._client.consistency_check(request)]
            case sa.UnmaskRequest():
                assert self._client is not None
                return number, [self._client.unmask(request), self._status(number)]
        return number, []


def _keys(directory: Path, count: int) -> list[str]:
    ca, ca_key = create_ca(directory)
    issue_certificate(ca, ca_key, "aggregator", directory, hosts=("localhost", "127.0.0.1"), role=AGGREGATOR)
    names = [f"node-{i:03d}" for i in range(count)]
    for name in names:
        issue_certificate(ca, ca_key, name, directory, role=NODE)
    return names


def _tls(directory: Path, name: str) -> TlsFiles:
    return TlsFiles(directory / "ca.pem", directory / f"{name}.pem", directory / f"{name}.key")


def run_aggregator(directory: Path, count: int, rounds: int, out: Path) -> None:
    """The aggregator process: serve `rounds` rounds to every node and write what it measured of itself."""
    import torch

    from fedsa_secure.data import aggregator_data
    from fedsa_secure.models import backbone_state, flatten_state
    from fedsa_secure.rounds import Federation, RoundSettings
    from fedsa_secure.transport.server import FederationServer

    torch.set_num_threads(1)
    names = [f"node-{i:03d}" for i in range(count)]
    probe, test = aggregator_data(0)
    sampler = _Sampler()
    server = FederationServer("127.0.0.1:0", _tls(directory, "aggregator"), allowed_nodes=names)
    settings = RoundSettings(method="fedsa+", rounds=rounds, cohort_size=count, adapt_every=rounds, stage_timeout=600.0)
    federation = Federation(settings, probe, test, server, names, trust_anchor=TrustAnchor((directory / "ca.pem").read_bytes()),
                            report=lambda line: None)
    started_rss = sampler.rss_mb()
    (directory / "port").write_text(str(server.start()))
    present = server.wait_for(names, 600)
    cpu = time.process_time()
    outcome = federation.run(present)
    cpu = time.process_time() - cpu
    for name in names:
        server.send(name, msg.Shutdown(reason="benchmark over"))
    time.sleep(2.0)
    server.stop()
    sampler.stop()
    out.write_text(json.dumps({
        "nodes": count,
        "joined": len(present),
        "round_seconds": [round(r.seconds - r.adapt_seconds, 3) for r in outcome.rounds],
        "survivors": [len(r.survivors) for r in outcome.rounds],
        "vector_length": int(flatten_state(backbone_state(outcome.student, outcome.parts)).size),
        "rss_before_nodes_mb": started_rss,
        "peak_rss_mb": sampler.peak_rss_mb(),
        "peak_threads": sampler.peak_threads,
        "aggregator_cpu_seconds": round(cpu, 2),  # the whole run, Scratch and the final adaptation included
    }))


def run_nodes(directory: Path, count: int) -> None:
    """The driver process: `count` simulated nodes, a thread each, dialling the aggregator."""
    from fedsa_secure.node import serve

    port = int((directory / "port").read_text())
    ca = (directory / "ca.pem").read_bytes()
    loops = []
    for index, name in enumerate(f"node-{i:03d}" for i in range(count)):
        credentials = Credentials.from_pem(ca, (directory / f"{name}.pem").read_bytes(), (directory / f"{name}.key").read_bytes())
        node = SimulatedNode(name, credentials, index)
        section = NodeSection(name, f"127.0.0.1:{port}", directory / name, server_name="localhost", rpc_timeout=600.0)
        loops.append(threading.Thread(target=serve, args=(node, section, _tls(directory, name)), daemon=True))
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join()


class _Sampler:
    """Peak OS threads and resident memory of this process, read from /proc every 50 ms."""

    def __init__(self) -> None:
        self.peak_threads = 0
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _status(self) -> dict[str, str]:
        lines = Path("/proc/self/status").read_text().splitlines()
        return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}

    def _sample(self) -> None:
        while self._running:
            self.peak_threads = max(self.peak_threads, int(self._status()["Threads"]))
            time.sleep(0.05)

    def rss_mb(self) -> float:
        return int(self._status()["VmRSS"].split()[0]) / 1024

    def peak_rss_mb(self) -> float:
        return int(self._status()["VmHWM"].split()[0]) / 1024

    def stop(self) -> None:
        self._running = False
        self._thread.join()


def measure(count: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        _keys(directory, count)
        out = directory / "result.json"
        here = [sys.executable, "-m", "bench.load"]
        aggregator = subprocess.Popen([*here, "_aggregator", str(directory), str(count), str(rounds), str(out)])
        deadline = time.monotonic() + 300
        while not (directory / "port").exists():
            if aggregator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the aggregator for {count} nodes did not start")
            time.sleep(0.1)
        nodes = subprocess.Popen([*here, "_nodes", str(directory), str(count)])
        try:
            if aggregator.wait(timeout=3600) != 0:
                raise RuntimeError(f"the aggregator for {count} nodes failed")
        finally:
            nodes.kill()
            nodes.wait()
        result: dict[str, Any] = json.loads(out.read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_aggregator"]:
        run_aggregator(Path(argv[1]), int(argv[2]), int(argv[3]), Path(argv[4]))
        return 0
    if argv[:1] == ["_nodes"]:
        run_nodes(Path(argv[1]), int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--nodes", type=int, nargs="+", default=list(SIZES), help=f"federation sizes (default {SIZES})")
    parser.add_argument("--rounds", type=int, default=2, help="secure rounds per size (default 2)")
    args = parser.parse_args(argv)
    results = []
    for count in args.nodes:
        result = measure(count, args.rounds)
        result["mean_round_seconds"] = round(float(np.mean(result["round_seconds"])), 3)
        results.append(result)
        if not args.json:
            print(f"{count:>4} nodes: round {result['mean_round_seconds']:.1f}s, aggregator peak {result['peak_rss_mb']:.0f} MB, "
                  f"{result['peak_threads']} threads", flush=True)
    small, large = results[0], results[-1]
    growth = {
        "nodes": large["nodes"] / small["nodes"],
        "memory_above_start": (large["peak_rss_mb"] - large["rss_before_nodes_mb"])
        / max(small["peak_rss_mb"] - small["rss_before_nodes_mb"], 1e-9),
        "threads": large["peak_threads"] / small["peak_threads"],
        "round_seconds": large["mean_round_seconds"] / small["mean_round_seconds"],
        "aggregator_cpu_seconds": large["aggregator_cpu_seconds"] / small["aggregator_cpu_seconds"],
    }
    document = {"sizes": results, "growth_from_smallest_to_largest": growth}
    print(json.dumps(document, indent=1) if args.json else json.dumps(growth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
