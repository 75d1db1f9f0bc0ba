"""The rounds are written once: the experiment grid, the in-process simulation and a federation over gRPC with mutual
TLS give the same student for the same seed (plaintext arm, where no DP noise is drawn)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from fedsa_secure import messages as msg
from fedsa_secure.config import NodeSection
from fedsa_secure.crypto import pki
from fedsa_secure.experiment.grid import run_grid
from fedsa_secure.experiment.simulation import simulate
from fedsa_secure.experiment.spec import Grid
from fedsa_secure.fedsa.adapt import AdaptRecipe
from fedsa_secure.fedsa.distill import DPSettings
from fedsa_secure.node import Node, serve
from fedsa_secure.transport.server import FederationServer
from fedsa_secure.transport.tls import TlsFiles

torch.set_num_threads(1)
GRID = Grid(datasets=("digits",), methods=("fedsa+",), seeds=(0,), rounds=2, local_epochs=1, eval_every=2, arms=(False,))


def node_process(node: Node, section: NodeSection, tls: TlsFiles) -> None:
    """What `run_node` does in a node's process: one intra-op thread (OpenMP's count is per thread), then its loop."""
    torch.set_num_threads(1)
    serve(node, section, tls)


@contextmanager
def over_grpc(keys: Path, nodes: list[Node]) -> Iterator[FederationServer]:
    """A real server on a free local port, each node's own loop (`node.serve`) dialling it with its certificate."""
    ca_cert, ca_key = pki.create_ca(keys)

    def tls(name: str, role: str) -> TlsFiles:
        return TlsFiles(ca_cert, *pki.issue_certificate(ca_cert, ca_key, name, keys, hosts=("localhost",), role=role))

    names = [node.name for node in nodes]
    server = FederationServer("127.0.0.1:0", tls("aggregator", pki.AGGREGATOR), allowed_nodes=names)
    port = server.start()
    loops = [threading.Thread(target=node_process, args=(node, NodeSection(node.name, f"127.0.0.1:{port}", keys / node.name,
                                                                           server_name="localhost"), tls(node.name, pki.NODE)))
             for node in nodes]
    for loop in loops:
        loop.start()
    try:
        assert server.wait_for(names, 60) == set(names)
        yield server
    finally:
        for name in names:
            server.send(name, msg.Shutdown(reason="test over"))
        for loop in loops:
            loop.join(timeout=60)
        server.stop()


def test_the_grid_the_simulation_and_the_network_give_the_same_student(tmp_path: Path) -> None:
    cache = tmp_path / "teachers"
    (record,) = run_grid(GRID, tmp_path / "grid", cache, progress=lambda line: None)
    settings = DPSettings(target_epsilon=GRID.epsilon, planned_rounds=GRID.rounds, local_epochs=GRID.local_epochs)
    run = {"method": "fedsa+", "dataset": "digits", "private": False, "teacher_cache": cache, "eval_every": GRID.eval_every,
           "recipe": AdaptRecipe(batch_size=GRID.adapt_batch)}
    simulated = simulate(0, GRID.rounds, GRID.cohort, settings, **run)
    networked = simulate(0, GRID.rounds, GRID.cohort, settings, **run, over=lambda nodes: over_grpc(tmp_path / "keys", nodes))
    assert record["student_sha256"] == simulated["student_sha256"] == networked["student_sha256"]
    assert [r["cohort"] for r in simulated["rounds"][1:]] == [r["cohort"] for r in networked["rounds"][1:]] == record["cohorts"]
    assert networked["final_accuracy"] == pytest.approx(simulated["final_accuracy"]) == record["accuracy"]
    assert simulated["bytes_up"] > 0 and networked["bytes_up"] is None  # counted in memory only
