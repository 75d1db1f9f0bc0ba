"""The aggregator: owns the student and the probe set, selects cohorts, runs secure rounds.

It only ever holds masked vectors of individual nodes; `SecAggServer.finish` gives it the
weighted sum, which it amalgamates into the student. `federation.method` picks the algorithm:
faithful `fedsa` (Grad-CAM selection every `select_every` rounds, backbone amalgamated, fresh head
at adaptation) or `fedsa+` (one LogME selection, since its scores do not depend on the student;
backbone and target-task head amalgamated, adaptation starting from the amalgamated head).
Adaptation starts from the mean amalgamated student of the last `average_rounds` rounds
(fedsa.amalgamate.TailAverage), so the result does not swing with one round's DP noise.
Each round's amalgamated student is checkpointed under `checkpoints/` (round 0: the initial one).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fedsa_secure import messages as msg
from fedsa_secure.config import AggregatorConfig, FederationSection
from fedsa_secure.crypto import TrustAnchor
from fedsa_secure.crypto.rand import random_bytes
from fedsa_secure.data import LabelledSet, aggregator_data, federation
from fedsa_secure.errors import AbortRound, BudgetsExhausted, IntegrityError, ProtocolError
from fedsa_secure.fedsa.adapt import AdaptRecipe, adapt, evaluate, scratch
from fedsa_secure.fedsa.amalgamate import TailAverage, apply_update
from fedsa_secure.fedsa.compare import paired_accuracy_difference
from fedsa_secure.fedsa.distill import FeatureObjective
from fedsa_secure.fedsa.output_kd import OutputKDSettings
from fedsa_secure.fedsa.saliency import draw_cohort, gradcam_maps, selection_probabilities
from fedsa_secure.fedsa.select_plus import concentrated_probabilities
from fedsa_secure.fedsa.supervised import correct
from fedsa_secure.models import backbone_state, flatten_state, make_student
from fedsa_secure.plots import plot_progress
from fedsa_secure.secagg import messages as sa
from fedsa_secure.secagg.quantize import required_modulus_bits
from fedsa_secure.secagg.server import SecAggServer
from fedsa_secure.transport.server import FederationServer
from fedsa_secure.transport.tls import TlsFiles

log = logging.getLogger("fedsa_secure.aggregator")


def released_parts(method: str) -> tuple[str, ...]:
    """The student parts the method's nodes train and release (what the secure sum carries), as the nodes' objectives say."""
    if method == "fedsa":
        return FeatureObjective.released
    return ("features", "head") if OutputKDSettings().release_head else ("features",)


def aggregator_sets(fed: FederationSection) -> tuple[LabelledSet, LabelledSet]:
    """The student owner's (probe, test) sets for the configured dataset."""
    if fed.dataset == "digits":
        return aggregator_data(fed.seed, fed.probe_per_class)
    return federation(fed.dataset).aggregator(fed.seed, fed.probe_budget)


@dataclass
class NodeRecord:
    """What the aggregator knows of a node: only public accounting figures it reported."""

    name: str
    epsilon: float = 0.0
    delta: float = 0.0
    target_epsilon: float = 0.0
    rounds_trained: int = 0
    fits_next_round: bool = True  # the node's own budget check, as last reported
    ledger_entries: int = 0  # the node's ledger witness, as last reported (the audit checks it)
    ledger_head: str = ""
    declines: list[str] = field(default_factory=list)


@dataclass
class RoundRecord:
    round: int
    cohort: list[str]
    probabilities: dict[str, float]
    survivors: list[str]
    accuracy: float | None
    seconds: float
    epsilon: dict[str, float]  # each node's cumulative epsilon after this round
    ledger_heads: dict[str, dict[str, Any]]  # ledger witnesses the nodes reported during this round
    aborted: str | None = None


class Aggregator:
    """Runs the rounds of DESIGN.md section 2 over a `FederationServer`."""

    def __init__(self, config: AggregatorConfig, report: Callable[[str], None] = print) -> None:
        self.config = config
        self.report = report
        fed = config.federation
        self.run_dir = Path(config.aggregator.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rng = np.random.default_rng(fed.seed)
        self.probe, self.test = aggregator_sets(fed)
        self.student = make_student(num_classes=self.probe.num_classes, seed=fed.seed)
        self.parts = released_parts(fed.method)
        self.tail = TailAverage(fed.average_rounds, self.parts)
        # fedsa+ amalgamates a target-task head: adaptation fine-tunes it instead of starting afresh.
        self.recipe = AdaptRecipe(fresh_head="head" not in self.parts)
        self.scores: dict[str, float] = {}  # the latest transferability each node reported
        self.nodes = {name: NodeRecord(name) for name in fed.nodes}
        self.rounds: list[RoundRecord] = []
        self.probabilities = {name: 1.0 / len(fed.nodes) for name in fed.nodes}
        self._heads_this_round: dict[str, dict[str, Any]] = {}
        self.stopped: str | None = None  # why the run ended before its last round, if it did
        tls = TlsFiles(config.tls.ca_cert, config.tls.cert, config.tls.key)
        tls.load()  # fail on a bad key file before any work
        self.server = FederationServer(config.aggregator.listen, tls, allowed_nodes=fed.nodes)

    def run(self) -> dict[str, Any]:
        fed = self.config.federation
        started = time.perf_counter()
        self.saliency_model = scratch(self.probe, fed.seed)
        scratch_hits = correct(self.saliency_model, self.test.x, self.test.y)
        scratch_accuracy = float(scratch_hits.mean())
        self.report(
            f"{fed.method} on {fed.dataset}; scratch baseline (student trained on {len(self.probe)} probe labels only): "
            f"accuracy {scratch_accuracy:.4f}"
        )
        self._checkpoint(0)
        port = self.server.start()
        try:
            self._announce(port)
            present = self.server.wait_for(fed.nodes, self.config.aggregator.join_timeout)
            missing = sorted(set(fed.nodes) - present)
            if len(present) < fed.cohort_size:
                raise AbortRound(f"only {len(present)} of {len(fed.nodes)} nodes joined; missing {missing}")
            if missing:
                self.report(f"continuing without nodes that did not join: {', '.join(missing)}")
            adapted = None
            for round_number in range(1, fed.rounds + 1):
                try:
                    adapted = self._round(round_number, sorted(present))
                except BudgetsExhausted as exc:
                    self.stopped = f"stopped before round {round_number}: {exc}"
                    self.report(self.stopped)
                    break
            if adapted is None or not self.rounds or self.rounds[-1].accuracy is None:
                adapted = adapt(self.tail.averaged(self.student), self.probe, fed.seed, self.recipe)
            hits = correct(adapted, self.test.x, self.test.y)
            accuracy = float(hits.mean())
            difference = paired_accuracy_difference(hits, scratch_hits)
        finally:
            for name in fed.nodes:
                self.server.send(name, msg.Shutdown(reason="run complete"))
            time.sleep(min(2.0, self.config.aggregator.stage_timeout))  # let nodes poll the shutdown
            self.server.stop()
        summary = self._summary(accuracy, scratch_accuracy, difference, time.perf_counter() - started)
        self._save(adapted, summary)
        return summary

    def _announce(self, port: int) -> None:
        port_file = self.config.aggregator.port_file
        if port_file is not None:
            _atomic_write(Path(port_file), str(port))
        self.report(f"aggregator listening on port {port} (mutual TLS); waiting for {len(self.config.federation.nodes)} nodes")

    def _round(self, number: int, present: list[str]) -> torch.nn.Module | None:
        fed = self.config.federation
        started = time.perf_counter()
        if fed.method == "fedsa+" and number == 1:
            self._select_outputs(number, present)
            log.info("round %d: selection took %.2fs", number, time.perf_counter() - started)
        elif fed.method == "fedsa" and (number - 1) % fed.select_every == 0:
            self._select(number, present)
            log.info("round %d: selection took %.2fs", number, time.perf_counter() - started)
        names = [n for n in present if n in self.probabilities]
        cohort = self._draw(names)
        survivors: list[str] = []
        aborted = None
        try:
            survivors = self._secure_round(number, cohort)
        except (AbortRound, ProtocolError) as exc:
            aborted = str(exc)
            self.report(f"round {number}: aborted, student unchanged: {exc}")
        adapted, accuracy = None, None
        self._checkpoint(number)
        if aborted is None:
            self.tail.add(self.student)
        if number % fed.adapt_every == 0 or number == fed.rounds:
            adapted = adapt(self.tail.averaged(self.student), self.probe, fed.seed, self.recipe)
            accuracy = evaluate(adapted, self.test)
            self.saliency_model = adapted
            log.info("round %d: adapted after %.2fs", number, time.perf_counter() - started)
        record = RoundRecord(
            number, sorted(cohort), {n: float(self.probabilities[n]) for n in names}, survivors, accuracy,
            time.perf_counter() - started, {n: r.epsilon for n, r in self.nodes.items()}, self._heads_this_round, aborted,
        )
        self._heads_this_round = {}
        self.rounds.append(record)
        self.report(self._progress_line(record))
        return adapted

    def _draw(self, names: list[str]) -> list[str]:
        """A cohort drawn by selection probability from the nodes whose budget fits one more round.

        A node that has spent its budget is never asked (it would decline): the draw goes to
        the others instead. With fewer such nodes than the cohort size the run ends.
        """
        size = self.config.federation.cohort_size
        able = [n for n in names if self.nodes[n].fits_next_round]
        if len(able) < size:
            spent = sorted(set(names) - set(able))
            raise BudgetsExhausted(
                f"{len(able)} of {len(names)} nodes have privacy budget left for another round and a cohort needs {size}; "
                f"budget spent: {', '.join(spent) or 'none'}"
            )
        probs = np.array([self.probabilities[n] for n in able])
        return draw_cohort(able, probs / probs.sum(), size, self.rng)

    def _select(self, number: int, present: list[str]) -> None:
        # Grad-CAM needs a trained head: use the latest adapted student (Scratch before round 1).
        maps = gradcam_maps(self.saliency_model, self.probe.x)
        request = msg.SelectRequest(round=number, probe_images=self.probe.x, student_maps=maps)
        scores = self._collect_scores(number, present, request)
        self.probabilities = dict(zip(scores, map(float, selection_probabilities(list(scores.values())))))

    def _select_outputs(self, number: int, present: list[str]) -> None:
        """fedsa+: send the labelled probe set once; each node returns its teacher's LogME score."""
        probe = self.probe
        request = msg.OutputSelectRequest(round=number, probe_images=probe.x, probe_labels=probe.y, num_classes=probe.num_classes)
        scores = self._collect_scores(number, present, request)
        self.probabilities = dict(zip(scores, map(float, concentrated_probabilities(list(scores.values())))))

    def _collect_scores(self, number: int, present: list[str], request: msg.ServerMessage) -> dict[str, float]:
        """Each answering node's transferability scalar, sorted by node name; too few answers abort the run."""
        for name in present:
            self.server.send(name, request)
        replies = self.server.collect(present, msg.SelectReply, self.config.aggregator.stage_timeout, round=number)
        names = sorted(replies)
        if len(names) < self.config.federation.cohort_size:
            raise AbortRound(f"only {len(names)} nodes answered selection in round {number}")
        self._record_privacy(names, number)
        self.scores = {n: float(replies[n].transferability) for n in names}
        return dict(self.scores)

    def _secure_round(self, number: int, cohort: list[str]) -> list[str]:
        """Send the student to the cohort and securely sum their weighted updates into it."""
        started = time.perf_counter()
        state = backbone_state(self.student, self.parts)
        config = self._secagg_config(number, cohort, flatten_state(state).size)
        weight = 1.0 / len(cohort)
        for name in cohort:
            self.server.send(name, msg.TrainRequest(round=number, student_state=state, weight=weight, secagg=config))
        # With the CA, the server drops a node whose signature fails instead of forwarding it.
        server = SecAggServer(config, TrustAnchor(Path(self.config.tls.ca_cert).read_bytes()))
        timeout = self.config.aggregator.stage_timeout
        for name, reply in self.server.collect(cohort, (sa.AdvertiseKeys, msg.Decline), timeout, round=number).items():
            if isinstance(reply, msg.Decline):
                self.nodes[name].declines.append(reply.reason)
                self.nodes[name].fits_next_round = False
                self.report(f"round {number}: {reply.reason}")
            else:
                _accept(server.receive_advertise, reply, name)
        log.info("round %d: keys advertised after %.2fs", number, time.perf_counter() - started)
        roster = server.roster()
        members = [a.sender for a in roster.advertisements]
        for name in members:
            self.server.send(name, roster)
        for name, reply in self.server.collect(members, sa.ShareKeys, timeout, round=number).items():
            _accept(server.receive_shares, reply, name)
        log.info("round %d: shares collected after %.2fs", number, time.perf_counter() - started)
        deliveries = server.deliveries()
        for name, delivery in deliveries.items():
            self.server.send(name, delivery)
        masked = self.server.collect(deliveries, sa.MaskedInput, timeout, round=number)
        for name, reply in masked.items():
            _accept(server.receive_masked, reply, name)
        log.info("round %d: masked inputs collected after %.2fs", number, time.perf_counter() - started)
        self._dump_masked(number, masked)
        check = server.consistency_request()
        for name in check.survivors:
            self.server.send(name, check)
        for name, reply in self.server.collect(check.survivors, sa.ConsistencyCheckResponse, timeout, round=number).items():
            _accept(server.receive_consistency, reply, name)
        request = server.unmask_request()
        signers = [signer for signer, _ in request.signatures]
        for name in signers:
            self.server.send(name, request)
        for name, reply in self.server.collect(signers, sa.UnmaskResponse, timeout, round=number).items():
            _accept(server.receive_unmask, reply, name)
        total = server.finish()
        for name, reason in server.rejected.items():
            log.warning("dropped %s while unmasking: %s", name, reason)
        log.info("round %d: sum unmasked after %.2fs", number, time.perf_counter() - started)
        # Weights were 1/|cohort| before masking; rescale so dropouts do not shrink the step.
        total *= len(cohort) / len(request.survivors)
        self._dump(f"aggregate-r{number}.npy", total)
        apply_update(self.student, total, self.parts)
        self._record_privacy(signers, number)  # nodes report after answering the unmask request
        return list(request.survivors)

    def _record_privacy(self, names: list[str] | tuple[str, ...], number: int) -> None:
        """Nodes send a PrivacyStatus with every selection reply and after every round they trained in."""
        timeout = self.config.aggregator.stage_timeout
        for name, status in self.server.collect(names, msg.PrivacyStatus, timeout, round=number).items():
            record = self.nodes[name]
            record.epsilon, record.delta = status.epsilon, status.delta
            record.target_epsilon, record.rounds_trained = status.target_epsilon, status.rounds_trained
            record.fits_next_round = status.fits_next_round
            record.ledger_entries, record.ledger_head = status.ledger_entries, status.ledger_head
            self._heads_this_round[name] = {"entries": status.ledger_entries, "head": status.ledger_head}

    def _secagg_config(self, number: int, cohort: list[str], length: int) -> sa.RoundConfig:
        spec = sa.QuantizationSpec(clip=self.config.secagg.clip, level_bits=self.config.secagg.level_bits)
        return sa.RoundConfig(
            round=number,
            participants=tuple(sorted(cohort)),
            threshold=self.config.threshold,
            vector_length=length,
            quantization=spec,
            modulus_bits=required_modulus_bits(len(cohort), spec.level_bits),
            nonce=random_bytes(32),
        )

    def _progress_line(self, record: RoundRecord) -> str:
        fed = self.config.federation
        cohort = " ".join(f"{n}(p={record.probabilities.get(n, 0):.2f})" for n in record.cohort)
        spent = " ".join(f"{n}={r.epsilon:.2f}" for n, r in self.nodes.items())
        accuracy = "-" if record.accuracy is None else f"{record.accuracy:.4f}"
        return (
            f"round {record.round}/{fed.rounds} | cohort {cohort} | epsilon {spent} | "
            f"accuracy {accuracy} | {record.seconds:.1f}s"
        )

    def _summary(
        self, accuracy: float, scratch_accuracy: float, difference: tuple[float, float, float], seconds: float
    ) -> dict[str, Any]:
        fed = self.config.federation
        return {
            "method": fed.method,
            "dataset": fed.dataset,
            "released": list(self.parts),
            "average_rounds": fed.average_rounds,
            "vector_length": int(flatten_state(backbone_state(self.student, self.parts)).size),
            "transferability": self.scores,
            "student_accuracy": accuracy,
            "scratch_accuracy": scratch_accuracy,
            # on the same test records, with the exact 95% interval that the test set's size allows
            "student_minus_scratch": dict(zip(("difference", "low", "high"), difference)),
            "rounds": len(self.rounds),
            "stopped": self.stopped,
            "run_dir": str(self.run_dir.resolve()),
            "seconds": seconds,
            "nodes": [
                {k: v for k, v in asdict(r).items() if k not in ("declines", "fits_next_round")}
                | {"declines": len(r.declines), "budget_left_for_a_round": r.fits_next_round}
                for r in self.nodes.values()
            ],
            "history": [asdict(r) for r in self.rounds],
            "secagg": {"clip": self.config.secagg.clip, "level_bits": self.config.secagg.level_bits,
                       "threshold": self.config.threshold},
            "probe_size": len(self.probe),
            "test_size": len(self.test),
        }

    def _save(self, adapted: torch.nn.Module, summary: dict[str, Any]) -> None:
        _atomic_torch_save(adapted.state_dict(), self.run_dir / "student.pt")
        metadata = {
            "method": self.config.federation.method,
            "architecture": type(adapted).__name__,
            "num_classes": self.probe.num_classes,
            "input_shape": list(self.probe.x.shape[1:]),
            "accuracy": summary["student_accuracy"],
            "rounds": summary["rounds"],
            "average_rounds": self.config.federation.average_rounds,
            "dataset": self.config.federation.dataset,
            "seed": self.config.federation.seed,
        }
        _atomic_write(self.run_dir / "student.json", json.dumps(metadata, indent=2))
        _atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        plot_progress(summary, self.run_dir / "progress.png")

    def _checkpoint(self, number: int) -> None:
        """The amalgamated student after round `number` (before adaptation), for resuming and for checking sums."""
        _atomic_torch_save(self.student.state_dict(), self.run_dir / "checkpoints" / f"student-r{number}.pt")

    def _dump(self, name: str, array: np.ndarray) -> None:
        dump_dir = self.config.testing.dump_dir
        if dump_dir is not None:
            Path(dump_dir).mkdir(parents=True, exist_ok=True)
            np.save(Path(dump_dir) / name, array)

    def _dump_masked(self, number: int, masked: dict[str, msg.ClientMessage]) -> None:
        for name, reply in masked.items():
            assert isinstance(reply, sa.MaskedInput)
            self._dump(f"masked-r{number}-{name}.npy", np.frombuffer(reply.packed, dtype=np.uint8))


def _accept(receive: Callable[[Any], None], message: Any, sender: str) -> None:
    """Feed one node's message to the secagg server; a bad message drops that node, not the round."""
    try:
        claimed = getattr(message, "sender", sender)
        if claimed != sender:
            raise ProtocolError(f"message claims sender {claimed!r} but arrived over {sender!r}'s TLS identity")
        receive(message)
    except (ProtocolError, IntegrityError) as exc:
        log.warning("dropping %s from the round: %s", sender, exc)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def _atomic_torch_save(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    torch.save(state, temp)
    os.replace(temp, path)


def run_aggregator(config: AggregatorConfig, report: Callable[[str], None] = print) -> dict[str, Any]:
    torch.set_num_threads(1)  # small models; nodes may share this machine's cores
    return Aggregator(config, report).run()
