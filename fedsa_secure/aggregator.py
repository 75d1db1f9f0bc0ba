"""The aggregator: owns the student and the probe set, selects cohorts, runs secure rounds.

It only ever holds masked vectors of individual nodes; `SecAggServer.finish` gives it the sum of
the survivors' unweighted updates, whose mean it adds to the student (no per-node weight exists
that could single a node out). `federation.method` picks the algorithm: faithful `fedsa`
(Grad-CAM selection every `select_every` rounds, backbone amalgamated, fresh head at adaptation)
or `fedsa+` (LogME selection once per node, since its scores do not depend on the student;
backbone and target-task head amalgamated, adaptation starting from the amalgamated head).
A node that restarts sends a Join with its ledger's figures and is asked to select again.
Adaptation starts from the mean amalgamated student of the last `average_rounds` rounds
(fedsa.amalgamate.TailAverage), so the result does not swing with one round's DP noise.
Each round's amalgamated student is checkpointed under `checkpoints/` (round 0: the initial one).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
from fedsa_secure.files import atomic_torch_save, atomic_write
from fedsa_secure.models import backbone_state, flatten_state, make_student, state_digest
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
        self.selected: set[str] = set()  # nodes that answered selection since they (re)started
        self.nodes = {name: NodeRecord(name) for name in fed.nodes}
        self.rounds: list[RoundRecord] = []
        self.probabilities: dict[str, float] = {}  # selection probability of each scored node
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
                    adapted = self._round(round_number, present)
                except (BudgetsExhausted, AbortRound) as exc:
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
            atomic_write(Path(port_file), str(port))
        self.report(f"aggregator listening on port {port} (mutual TLS); waiting for {len(self.config.federation.nodes)} nodes")

    def _round(self, number: int, present: set[str]) -> torch.nn.Module | None:
        fed = self.config.federation
        started = time.perf_counter()
        present |= self._take_joins()
        if fed.method == "fedsa" and (number - 1) % fed.select_every == 0:
            self._select(number, sorted(present), full=True)
        elif unscored := sorted(present - self.selected):  # round 1 of fedsa+, and any node that (re)joined
            self._select(number, unscored, full=False)
        log.info("round %d: selection took %.2fs", number, time.perf_counter() - started)
        names = sorted(n for n in present if n in self.probabilities)
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

    def _take_joins(self) -> set[str]:
        """Nodes that (re)started since last asked: record the status their ledger gives; they must select again."""
        joined = self.server.collect(self.config.federation.nodes, msg.Join, timeout=0)
        for name, join in joined.items():
            assert isinstance(join, msg.Join)
            if dropped := self.server.discard_inbox(name):
                log.info("%s rejoined: dropped %d queued answers of its previous process", name, dropped)
            if name in self.selected:
                self.report(f"{name} restarted; its ledger says epsilon {join.status.epsilon:.3f}; it selects again")
            self.selected.discard(name)
            self._record_status(name, join.status)
        return set(joined)

    def _draw(self, names: list[str]) -> list[str]:
        """A cohort drawn by selection probability from the nodes whose budget fits one more round.

        A node that has spent its budget is never asked (it would decline): the draw goes to
        the others instead. With fewer such nodes than the cohort size the run ends.
        """
        size = self.config.federation.cohort_size
        able = [n for n in names if self.nodes[n].fits_next_round]
        if len(able) < size:
            spent = sorted(n for n in names if not self.nodes[n].fits_next_round)
            raise BudgetsExhausted(
                f"{len(able)} of {len(names)} selected nodes have privacy budget left for another round and a cohort "
                f"needs {size}; budget spent: {', '.join(spent) or 'none'}"
            )
        probs = np.array([self.probabilities[n] for n in able])
        return draw_cohort(able, probs / probs.sum(), size, self.rng)

    def _select(self, number: int, names: list[str], *, full: bool) -> None:
        """Ask `names` for their transferability; `full`: their scores replace everyone's (fedsa's depend on the student).

        `fedsa`: Grad-CAM maps of the latest adapted student (Scratch before round 1) on the probe images.
        `fedsa+`: the labelled probe set; each node scores its DP teacher's outputs with LogME.
        """
        probe = self.probe
        request: msg.ServerMessage
        if self.config.federation.method == "fedsa":
            maps = gradcam_maps(self.saliency_model, probe.x)
            request = msg.SelectRequest(round=number, probe_images=probe.x, student_maps=maps)
        else:
            request = msg.OutputSelectRequest(round=number, probe_images=probe.x, probe_labels=probe.y,
                                              num_classes=probe.num_classes)
        for name in names:
            self.server.send(name, request)
        replies = self._gather(names, msg.SelectReply, number)
        scores = {}
        for name, reply in sorted(replies.items()):
            assert isinstance(reply, msg.SelectReply)
            if math.isfinite(reply.transferability):
                scores[name] = float(reply.transferability)
            else:
                self.report(f"round {number}: {name} answered selection with {reply.transferability}; left out of selection")
        self._record_privacy(sorted(replies), number)
        if full:
            self.scores, self.selected = {}, set()
        for name in names:
            self.scores.pop(name, None)
        self.scores.update(scores)
        self.selected |= set(scores)
        if len(self.scores) < self.config.federation.cohort_size:
            raise AbortRound(f"only {len(self.scores)} nodes have a transferability score in round {number}")
        ordered = sorted(self.scores)
        values = [self.scores[n] for n in ordered]
        if self.config.federation.method == "fedsa":
            probabilities = selection_probabilities(values)
        else:
            probabilities = concentrated_probabilities(values)
        self.probabilities = dict(zip(ordered, map(float, probabilities)))

    def _gather(self, names: Iterable[str], expect: type | tuple[type, ...], number: int) -> dict[str, msg.ClientMessage]:
        """Each node's answer of an `expect` type; a node that aborts instead is reported and not waited for."""
        kinds = (expect if isinstance(expect, tuple) else (expect,)) + (msg.Abort,)
        answers = self.server.collect(names, kinds, self.config.aggregator.stage_timeout, round=number)
        for name, answer in list(answers.items()):
            if isinstance(answer, msg.Abort):
                self.report(f"round {number}: {name} left: {answer.reason}")
                del answers[name]
        return answers

    def _secure_round(self, number: int, cohort: list[str]) -> list[str]:
        """Send the student to the cohort, securely sum their unweighted updates, and add the survivors' mean to it."""
        started = time.perf_counter()
        state = backbone_state(self.student, self.parts)
        config = self._secagg_config(number, cohort, flatten_state(state).size, state_digest(state))
        for name in cohort:
            self.server.send(name, msg.TrainRequest(round=number, student_state=state, secagg=config))
        # With the CA, the server drops a node whose signature fails instead of forwarding it.
        server = SecAggServer(config, TrustAnchor(Path(self.config.tls.ca_cert).read_bytes()))
        for name, reply in self._gather(cohort, (sa.AdvertiseKeys, msg.Decline), number).items():
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
        for name, reply in self._gather(members, sa.ShareKeys, number).items():
            _accept(server.receive_shares, reply, name)
        log.info("round %d: shares collected after %.2fs", number, time.perf_counter() - started)
        deliveries = server.deliveries()
        for name, delivery in deliveries.items():
            self.server.send(name, delivery)
        masked = self._gather(deliveries, sa.MaskedInput, number)
        for name, reply in masked.items():
            _accept(server.receive_masked, reply, name)
        log.info("round %d: masked inputs collected after %.2fs", number, time.perf_counter() - started)
        self._dump_masked(number, masked)
        check = server.consistency_request()
        for name in check.survivors:
            self.server.send(name, check)
        for name, reply in self._gather(check.survivors, sa.ConsistencyCheckResponse, number).items():
            _accept(server.receive_consistency, reply, name)
        request = server.unmask_request()
        signers = [signer for signer, _ in request.signatures]
        for name in signers:
            self.server.send(name, request)
        unmasked = self._gather(signers, sa.UnmaskResponse, number)
        for name, reply in unmasked.items():
            _accept(server.receive_unmask, reply, name)
        total = server.finish()
        for name, reason in server.rejected.items():
            log.warning("dropped %s while unmasking: %s", name, reason)
        log.info("round %d: sum unmasked after %.2fs", number, time.perf_counter() - started)
        mean = total / len(request.survivors)  # each survivor added its update unweighted
        self._dump(f"aggregate-r{number}.npy", mean)
        apply_update(self.student, mean, self.parts)
        self._record_privacy(sorted(unmasked), number)  # nodes report after answering the unmask request
        return list(request.survivors)

    def _record_privacy(self, names: list[str], number: int) -> None:
        """Nodes send a PrivacyStatus with every selection reply and after every round they trained in."""
        for name, status in self._gather(names, msg.PrivacyStatus, number).items():
            assert isinstance(status, msg.PrivacyStatus)
            self._record_status(name, status)

    def _record_status(self, name: str, status: msg.PrivacyStatus) -> None:
        """Keep what a node's ledger says (its figures are checked, not trusted: the audit compares them with the ledger)."""
        figures = (status.epsilon, status.delta, status.target_epsilon)
        if not all(math.isfinite(x) and x >= 0 for x in figures) or status.rounds_trained < 0 or status.ledger_entries < 0:
            self.report(f"{name} reported an impossible privacy status ({figures}); ignored")
            return
        record = self.nodes[name]
        record.epsilon, record.delta = status.epsilon, status.delta
        record.target_epsilon, record.rounds_trained = status.target_epsilon, status.rounds_trained
        record.fits_next_round = status.fits_next_round
        record.ledger_entries, record.ledger_head = status.ledger_entries, status.ledger_head
        self._heads_this_round[name] = {"entries": status.ledger_entries, "head": status.ledger_head}

    def _secagg_config(self, number: int, cohort: list[str], length: int, context: bytes) -> sa.RoundConfig:
        spec = sa.QuantizationSpec(clip=self.config.secagg.clip, level_bits=self.config.secagg.level_bits)
        return sa.RoundConfig(
            round=number,
            participants=tuple(sorted(cohort)),
            threshold=self.config.threshold,
            vector_length=length,
            quantization=spec,
            modulus_bits=required_modulus_bits(len(cohort), spec.level_bits),
            nonce=random_bytes(32),
            context=context,
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
        atomic_torch_save(adapted.state_dict(), self.run_dir / "student.pt")
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
        atomic_write(self.run_dir / "student.json", json.dumps(metadata, indent=2))
        atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        plot_progress(summary, self.run_dir / "progress.png")

    def _checkpoint(self, number: int) -> None:
        """The amalgamated student after round `number` (before adaptation), for resuming and for checking sums."""
        atomic_torch_save(self.student.state_dict(), self.run_dir / "checkpoints" / f"student-r{number}.pt")

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


def run_aggregator(config: AggregatorConfig, report: Callable[[str], None] = print) -> dict[str, Any]:
    torch.set_num_threads(1)  # small models; nodes may share this machine's cores
    return Aggregator(config, report).run()
