"""The aggregator process: a config, a gRPC channel with mutual TLS (transport.server) and the rounds (rounds.Federation).

It listens, waits for the nodes, runs the rounds over the server, tells the nodes the run is over
and writes the run directory (started again on the same run directory, it resumes after the last
round its journal, `journal.sqlite`, committed): `student.pt` and `student.json`, `summary.json`, `progress.png`
and `checkpoints/student-r<N>.pt` (the amalgamated student after each round; r0 the initial one).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsa_secure import messages as msg
from fedsa_secure.config import AggregatorConfig, FederationSection
from fedsa_secure.crypto import TrustAnchor, sha256
from fedsa_secure.data import LabelledSet, aggregator_data, federation
from fedsa_secure.data.records import Source, load_labelled
from fedsa_secure.errors import AbortRound, ConfigError
from fedsa_secure.fedsa.compare import paired_accuracy_difference
from fedsa_secure.fedsa.supervised import correct
from fedsa_secure.files import atomic_torch_save, atomic_write
from fedsa_secure.journal import JOURNAL_FILE, Journal
from fedsa_secure.models import backbone_state, flatten_state, use_student
from fedsa_secure.plots import plot_progress
from fedsa_secure.rounds import Federation, Outcome, RoundSettings
from fedsa_secure.transport.server import FederationServer
from fedsa_secure.transport.tls import TlsFiles


def aggregator_sets(fed: FederationSection) -> tuple[LabelledSet, LabelledSet]:
    """The student owner's (probe, test) sets: its own files, or those of the configured built-in dataset."""
    if fed.probe is not None and fed.test is not None:
        return own_sets(fed.probe, fed.test)
    if fed.dataset == "digits":
        return aggregator_data(fed.seed, fed.probe_per_class)
    return federation(fed.dataset).aggregator(fed.seed, fed.probe_budget)


def dataset_name(fed: FederationSection) -> str:
    """What the summary calls the student owner's data."""
    if fed.probe is None or fed.test is None:
        return fed.dataset
    return "own ({}, {})".format(*(s.name if isinstance(s, Path) else s.spec for s in (fed.probe, fed.test)))


def own_sets(probe_file: Source, test_file: Source) -> tuple[LabelledSet, LabelledSet]:
    """The student owner's own probe and test files, checked to hold records of one shape and labels of one task."""
    probe, test = load_labelled(probe_file, "probe"), load_labelled(test_file, "test")
    if probe.x.shape[1:] != test.x.shape[1:]:
        raise ConfigError(f"the probe set {probe_file} holds records of shape {list(probe.x.shape[1:])}, the test set "
                          f"{test_file} of shape {list(test.x.shape[1:])}: both must hold records of the student's input")
    classes = max(probe.num_classes, test.num_classes)
    if len(np.unique(probe.y)) < classes:
        missing = sorted(set(range(classes)) - set(probe.y.tolist()))
        raise ConfigError(f"the probe set {probe_file} has no record of class(es) {missing}, which the test set "
                          f"{test_file} holds: the student cannot learn a class it is never shown")
    return LabelledSet(probe.x, probe.y, classes), LabelledSet(test.x, test.y, classes)


def round_settings(config: AggregatorConfig) -> RoundSettings:
    """The rounds as the config's [federation], [secagg] and [aggregator] tables set them."""
    fed, secagg = config.federation, config.secagg
    return RoundSettings(
        method=fed.method, rounds=fed.rounds, cohort_size=fed.cohort_size, min_cohort=fed.min_cohort,
        select_every=fed.select_every, adapt_every=fed.adapt_every, average_rounds=fed.average_rounds, seed=fed.seed,
        clip=secagg.clip, level_bits=secagg.level_bits, threshold=config.threshold,
        stage_timeout=config.aggregator.stage_timeout, arch=use_student(fed.student),
    )


def _run_identity(settings: RoundSettings, fed: FederationSection, probe: LabelledSet) -> dict[str, Any]:
    """What a journal binds a run to: everything that decides its result (not timeouts), and the probe it adapts on."""
    return {**{k: v for k, v in asdict(settings).items() if k != "stage_timeout"}, "nodes": list(fed.nodes),
            "data": dataset_name(fed), "probe_sha256": sha256(probe.x.tobytes() + probe.y.tobytes()).hex()}


def run_aggregator(config: AggregatorConfig, report: Callable[[str], None] = print) -> dict[str, Any]:
    """Serve one federation run and write its run directory; returns the summary."""
    torch.set_num_threads(1)  # small models; nodes may share this machine's cores
    fed = config.federation
    run_dir = Path(config.aggregator.run_dir)
    if (run_dir / "summary.json").exists():  # started again after it finished (a supervisor's restart): the result stands
        report(f"{run_dir} holds a finished run; its result stands (a new run needs its own aggregator.run_dir)")
        finished: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
        return finished
    run_dir.mkdir(parents=True, exist_ok=True)
    probe, test = aggregator_sets(fed)
    tls = TlsFiles(config.tls.ca_cert, config.tls.cert, config.tls.key)
    tls.load()  # fail on a bad key file before any work
    server = FederationServer(config.aggregator.listen, tls, allowed_nodes=fed.nodes)
    settings = round_settings(config)
    rounds = Federation(
        settings, probe, test, server, fed.nodes, trust_anchor=TrustAnchor(Path(config.tls.ca_cert).read_bytes()),
        report=report, checkpoints=run_dir / "checkpoints", journal=Journal(run_dir / JOURNAL_FILE, _run_identity(settings, fed, probe)),
        dump_dir=config.testing.dump_dir,
    )
    started = time.perf_counter()
    port = server.start()
    try:
        if config.aggregator.port_file is not None:
            atomic_write(Path(config.aggregator.port_file), str(port))
        present: set[str] = set()
        if rounds.finished():  # restarted after its last round was committed: nothing is left to ask the nodes
            report(f"the journal holds all {fed.rounds} rounds; writing the result")
        else:
            report(f"aggregator listening on port {port} (mutual TLS); waiting for {len(fed.nodes)} nodes")
            present = server.wait_for(fed.nodes, config.aggregator.join_timeout)
            missing = sorted(set(fed.nodes) - present)
            if len(present) < fed.cohort_size:
                raise AbortRound(f"only {len(present)} of {len(fed.nodes)} nodes joined; missing {missing}")
            if missing:
                report(f"continuing without nodes that did not join: {', '.join(missing)}")
        outcome = rounds.run(present)
    finally:
        for name in fed.nodes:
            server.send(name, msg.Shutdown(reason="run complete"))
        time.sleep(min(2.0, config.aggregator.stage_timeout))  # let nodes poll the shutdown
        server.stop()
    summary = _summary(config, outcome, probe, test, run_dir, time.perf_counter() - started)
    _save(config, outcome, summary, run_dir, probe)
    return summary


def _summary(config: AggregatorConfig, outcome: Outcome, probe: LabelledSet, test: LabelledSet, run_dir: Path,
             seconds: float) -> dict[str, Any]:
    fed = config.federation
    hits = correct(outcome.adapted, test.x, test.y)
    difference = paired_accuracy_difference(hits, correct(outcome.scratch, test.x, test.y))
    return {
        "method": fed.method,
        "dataset": dataset_name(fed),
        "released": list(outcome.parts),
        "average_rounds": fed.average_rounds,
        "vector_length": int(flatten_state(backbone_state(outcome.student, outcome.parts)).size),
        "transferability": outcome.scores,
        "student_accuracy": float(hits.mean()),
        "scratch_accuracy": outcome.scratch_task_accuracy["digit"],
        # on the same test records, with the exact 95% interval that the test set's size allows
        "student_minus_scratch": dict(zip(("difference", "low", "high"), difference)),
        "rounds": len(outcome.rounds),
        "stopped": outcome.stopped,
        "run_dir": str(run_dir.resolve()),
        "seconds": seconds,
        "nodes": [
            {k: v for k, v in asdict(r).items() if k not in ("declines", "fits_next_round")}
            | {"declines": len(r.declines), "budget_left_for_a_round": r.fits_next_round}
            for r in outcome.nodes.values()
        ],
        "history": [{k: v for k, v in asdict(r).items() if k not in ("task_accuracy", "adapt_seconds")} for r in outcome.rounds],
        "adapt_seconds": sum(r.adapt_seconds for r in outcome.rounds),
        "secagg": {"clip": config.secagg.clip, "level_bits": config.secagg.level_bits, "threshold": config.threshold},
        "probe_size": len(probe),
        "test_size": len(test),
    }


def _save(config: AggregatorConfig, outcome: Outcome, summary: dict[str, Any], run_dir: Path, probe: LabelledSet) -> None:
    atomic_torch_save(outcome.adapted.state_dict(), run_dir / "student.pt")
    metadata = {
        "method": config.federation.method,
        "architecture": str(config.federation.student),
        "num_classes": probe.num_classes,
        "input_shape": list(probe.x.shape[1:]),
        "accuracy": summary["student_accuracy"],
        "rounds": summary["rounds"],
        "average_rounds": config.federation.average_rounds,
        "dataset": dataset_name(config.federation),
        "seed": config.federation.seed,
    }
    atomic_write(run_dir / "student.json", json.dumps(metadata, indent=2))
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
    plot_progress(summary, run_dir / "progress.png")
