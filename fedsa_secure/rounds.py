"""The rounds of a federation, written once: selection, the secure sum, amalgamation, adaptation.

`Federation` runs them over any `channel.Channel`: the aggregator process over gRPC
(`aggregator.py`), an in-process federation and the experiment grid over `InMemoryChannel`. It
only ever holds masked vectors of individual nodes; `SecAggServer.finish` gives it the sum of the
survivors' unweighted updates, whose mean it adds to the student (no per-node weight exists that
could single a node out). `settings.method` picks the algorithm: faithful `fedsa` (Grad-CAM
selection every `select_every` rounds, backbone amalgamated, fresh head at adaptation) or
`fedsa+` (one selection per node, since its scores do not depend on the student; backbone and
target-task head amalgamated, adaptation starting from the amalgamated head). A node that
restarts sends a Join with its ledger's figures and is asked to select again. Adaptation starts
from the mean amalgamated student of the last `average_rounds` rounds (fedsa.amalgamate.TailAverage),
so the result does not swing with one round's DP noise.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsa_secure import messages as msg
from fedsa_secure.channel import Channel
from fedsa_secure.crypto import TrustAnchor, sha256
from fedsa_secure.crypto.rand import random_bytes
from fedsa_secure.data import LabelledSet
from fedsa_secure.errors import AbortRound, BudgetsExhausted, ConfigError, IntegrityError, ProtocolError
from fedsa_secure.fedsa.adapt import DIGIT_ONLY, Adapted, AdaptRecipe, adapt_tasks, scratch, task_accuracy
from fedsa_secure.fedsa.amalgamate import TailAverage, apply_update
from fedsa_secure.fedsa.distill import FeatureObjective
from fedsa_secure.fedsa.output_kd import OutputKDSettings
from fedsa_secure.fedsa.saliency import draw_cohort, gradcam_maps, inclusion_probabilities, selection_probabilities
from fedsa_secure.fedsa.select_plus import TEMPERATURE, concentrated_probabilities
from fedsa_secure.files import atomic_torch_save
from fedsa_secure.journal import Committed, Journal
from fedsa_secure.models import (
    HeadedBackbone,
    architecture_digest,
    backbone_state,
    check_student,
    flatten_state,
    make_student,
    round_context,
    state_digest,
)
from fedsa_secure.secagg import messages as sa
from fedsa_secure.secagg.quantize import required_modulus_bits
from fedsa_secure.secagg.server import SecAggServer

log = logging.getLogger("fedsa_secure.rounds")
SELECTIONS = ("scores", "uniform", "random")  # the method's scores; every node every round (FedAvg+); a uniform draw


def released_parts(method: str, kd: OutputKDSettings | None = None) -> tuple[str, ...]:
    """The student parts the method's nodes train and release (what the secure sum carries), as the nodes' objectives say."""
    if method == "fedsa":
        return FeatureObjective.released
    return ("features", "head") if (kd or OutputKDSettings()).release_head else ("features",)


@dataclass(frozen=True)
class RoundSettings:
    """How the rounds run (a deployment takes them from its config's [federation] and [secagg] tables)."""

    method: str
    rounds: int
    cohort_size: int = 3
    min_cohort: int = 3
    select_every: int = 1
    adapt_every: int = 1
    average_rounds: int = 5
    seed: int = 0
    clip: float = 1.0
    level_bits: int = 16
    threshold: int = 0  # 0: derived from each round's cohort
    stage_timeout: float = 120.0
    selection: str = "scores"  # of SELECTIONS
    temperature: float = TEMPERATURE  # fedsa+: how fast selection odds fall with the score (select_plus)
    top_k: int | None = None  # fedsa+: select only among the k best-scored nodes
    arch: str = "cnn"  # a built-in student architecture, or one registered (models.register_student) on every party
    tasks: tuple[str, ...] = DIGIT_ONLY
    recipe: AdaptRecipe = field(default_factory=AdaptRecipe)

    def threshold_for(self, cohort: int) -> int:
        """t: survivors needed to unmask; never below min_cohort (a sum of two reveals each to the other)."""
        return self.threshold or max(self.min_cohort, cohort // 2 + 1)


@dataclass
class NodeRecord:
    """What the rounds know of a node: only public accounting figures it reported."""

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
    task_accuracy: dict[str, float] | None = None
    adapt_seconds: float = 0.0
    inclusion: dict[str, float] = field(default_factory=dict)  # each able node's chance of being drawn into the cohort


@dataclass
class Outcome:
    """What a run produced: the adapted student and how it got there."""

    adapted: Adapted
    student: HeadedBackbone  # the amalgamated student, before adaptation
    scratch: Adapted  # the Scratch baseline it is compared with
    task_accuracy: dict[str, float]
    scratch_task_accuracy: dict[str, float]
    parts: tuple[str, ...]
    rounds: list[RoundRecord]
    nodes: dict[str, NodeRecord]
    scores: dict[str, float]
    stopped: str | None
    seconds: float

    @property
    def accuracy(self) -> float:
        """The first target task's accuracy (the probe's own labels)."""
        return next(iter(self.task_accuracy.values()))


class Federation:
    """Runs the rounds over a channel. `baseline`: this seed's Scratch model if already trained (experiments share it)."""

    def __init__(
        self,
        settings: RoundSettings,
        probe: LabelledSet,
        test: LabelledSet,
        channel: Channel,
        nodes: Iterable[str],
        *,
        trust_anchor: TrustAnchor | None = None,
        baseline: Adapted | None = None,
        report: Callable[[str], None] = print,
        checkpoints: Path | None = None,
        journal: Journal | None = None,
        dump_dir: Path | None = None,
    ) -> None:
        if settings.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {settings.selection!r}")
        self.settings, self.probe, self.test, self.channel = settings, probe, test, channel
        self.report, self.anchor, self.checkpoints, self.dump_dir = report, trust_anchor, checkpoints, dump_dir
        if journal is not None and checkpoints is None:
            raise ValueError("a journal records checkpoints: give the directory they go to")
        self.journal = journal
        if settings.method == "fedsa" and probe.x.ndim != 4:
            raise ConfigError(f"method fedsa compares Grad-CAM maps of images; these records have shape {list(probe.x.shape[1:])}: "
                              "use method fedsa+")
        check_student(settings.arch, probe.num_classes, probe.x)
        self.architecture = msg.StudentArchitecture(settings.arch, probe.num_classes,
                                                    architecture_digest(settings.arch, probe.num_classes))
        self.rng = np.random.default_rng(settings.seed)
        self.student = make_student(probe.num_classes, settings.seed, settings.arch)
        self._inclusion: dict[str, float] = {}
        self.parts = released_parts(settings.method)
        self.tail = TailAverage(settings.average_rounds, self.parts)
        # fedsa+ amalgamates a target-task head: adaptation fine-tunes it instead of starting afresh.
        self.recipe = replace(settings.recipe, fresh_head="head" not in self.parts)
        self.baseline = baseline
        self.scores: dict[str, float] = {}  # the latest transferability each node reported
        self.selected: set[str] = set()  # nodes that answered selection since they (re)started
        self.nodes = {name: NodeRecord(name) for name in nodes}
        self.rounds: list[RoundRecord] = []
        self.probabilities: dict[str, float] = {}  # selection probability of each scored node
        self._heads_this_round: dict[str, dict[str, Any]] = {}
        self.stopped: str | None = None  # why the run ended before its last round, if it did
        self.saliency_model: Adapted | None = None  # the latest adapted student (fedsa's Grad-CAM needs a head)

    def finished(self) -> bool:
        """Whether the journal holds every round already (a restart after the last commit)."""
        return self.journal is not None and len(self.journal.rounds()) >= self.settings.rounds

    def run(self, present: set[str]) -> Outcome:
        """Every round with the nodes `present`, then the adapted student and its accuracy on the test set."""
        s = self.settings
        started = time.perf_counter()
        baseline = self.baseline or scratch(self.probe, s.seed, s.recipe, arch=s.arch, tasks=s.tasks)
        scratch_accuracy = task_accuracy(baseline, self.test)
        self.report(f"{s.method}: Scratch (the student trained on the {len(self.probe)} probe labels alone) has test accuracy "
                    f"{next(iter(scratch_accuracy.values())):.4f}")
        self.saliency_model = baseline  # Grad-CAM needs a trained head: Scratch before the first adaptation
        first = self._resume()
        adapted: Adapted | None = None
        for number in range(first, s.rounds + 1):
            try:
                adapted_now = self._round(number, present)
                adapted = adapted if adapted_now is None else adapted_now
            except (BudgetsExhausted, AbortRound) as exc:
                self.stopped = f"stopped before round {number}: {exc}"
                self.report(self.stopped)
                break
        if adapted is None or not self.rounds or self.rounds[-1].accuracy is None:
            adapted = self._adapt()
        return Outcome(adapted, self.student, baseline, task_accuracy(adapted, self.test), scratch_accuracy, self.parts,
                       self.rounds, self.nodes, dict(self.scores), self.stopped, time.perf_counter() - started)

    def _adapt(self) -> Adapted:
        s = self.settings
        return adapt_tasks(self.tail.averaged(self.student), self.probe, s.seed, s.tasks, self.recipe)

    def _round(self, number: int, present: set[str]) -> Adapted | None:
        s = self.settings
        started = time.perf_counter()
        self.channel.begin_round(number)
        present |= self._take_joins()
        if s.method == "fedsa" and (number - 1) % s.select_every == 0:
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
        student_sha256 = self._checkpoint(number)
        if aborted is None:
            self.tail.add(self.student, number)
        adapted, accuracy, adapt_started = None, None, time.perf_counter()
        selects_next = s.method == "fedsa" and number % s.select_every == 0
        if number % s.adapt_every == 0 or number == s.rounds or selects_next:
            adapted = self._adapt()
            accuracy = task_accuracy(adapted, self.test)
            self.saliency_model = adapted
            log.info("round %d: adapted after %.2fs", number, time.perf_counter() - started)
        record = RoundRecord(
            number, sorted(cohort), {n: float(self.probabilities[n]) for n in names}, survivors,
            None if accuracy is None else next(iter(accuracy.values())), time.perf_counter() - started,
            {n: r.epsilon for n, r in self.nodes.items()}, self._heads_this_round, aborted, accuracy,
            time.perf_counter() - adapt_started, self._inclusion,
        )
        self._heads_this_round = {}
        self.rounds.append(record)
        self._commit(record, student_sha256)
        self.report(self._progress_line(record))
        return adapted

    def _commit(self, record: RoundRecord, student_sha256: str) -> None:
        """The round is done once the journal says so (its checkpoint is on disk already)."""
        if self.journal is not None:
            self.journal.commit(Committed(record.round, asdict(record), {n: asdict(r) for n, r in self.nodes.items()},
                                          dict(self.rng.bit_generator.state), list(self.tail.rounds), student_sha256))

    def _resume(self) -> int:
        """The first round to run: 1, or the one after the journal's last committed round, whose state is restored."""
        committed = self.journal.rounds() if self.journal is not None else []
        if not committed:
            self._checkpoint(0)
            return 1
        last, digests = committed[-1], {c.number: c.student_sha256 for c in committed}
        self.rounds = [RoundRecord(**c.record) for c in committed]
        self.nodes.update({n: NodeRecord(**fields) for n, fields in last.nodes.items() if n in self.nodes})
        self.rng.bit_generator.state = last.draws
        self.student = self._restored(last.number, last.student_sha256)
        for number in last.tail:
            self.tail.add(self._restored(number, digests[number]), number)
        if self.settings.method == "fedsa" and self.tail.rounds:
            self.saliency_model = self._adapt()  # the round before a Grad-CAM selection adapts: the same model
        self.report(f"resuming after round {last.number} of {self.settings.rounds} (journal {self.journal and self.journal.path}); "
                    "the round in flight, if any, is redone with fresh keys")
        return last.number + 1

    def _restored(self, number: int, expected_sha256: str) -> HeadedBackbone:
        assert self.checkpoints is not None  # a journal needs checkpoints (__init__)
        path = self.checkpoints / f"student-r{number}.pt"
        blob = path.read_bytes()
        if sha256(blob).hex() != expected_sha256:
            raise IntegrityError(f"{path} is not the checkpoint the journal recorded for round {number} (its SHA-256 differs)")
        student = copy.deepcopy(self.student)
        student.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
        return student

    def _take_joins(self) -> set[str]:
        """Nodes that (re)started since last asked: record the status their ledger gives; they must select again."""
        joined = self.channel.collect(self.nodes, msg.Join, timeout=0)
        for name, join in joined.items():
            assert isinstance(join, msg.Join)
            if dropped := self.channel.discard_inbox(name):
                log.info("%s rejoined: dropped %d queued answers of its previous process", name, dropped)
            if name in self.selected:
                self.report(f"{name} joined again; its ledger says epsilon {join.status.epsilon:.3f}; it selects again")
            self.selected.discard(name)
            self._record_status(name, join.status)
        return set(joined)

    def _draw(self, names: list[str]) -> list[str]:
        """A cohort from the nodes whose budget fits one more round: by selection probability, all of them, or uniformly.

        A node that has spent its budget is never asked (it would decline): the draw goes to
        the others instead. With fewer such nodes than the cohort size the run ends.
        """
        s = self.settings
        able = [n for n in names if self.nodes[n].fits_next_round]
        size = len(names) if s.selection == "uniform" else s.cohort_size
        if len(able) < max(size, s.min_cohort):
            spent = sorted(n for n in names if not self.nodes[n].fits_next_round)
            raise BudgetsExhausted(
                f"{len(able)} of {len(names)} selected nodes have privacy budget left for another round and a cohort "
                f"needs {size}; budget spent: {', '.join(spent) or 'none'}"
            )
        if s.selection == "uniform":
            self._inclusion = dict.fromkeys(able, 1.0)
            return able
        probs = np.array([self.probabilities[n] for n in able])
        self._inclusion = dict(zip(able, map(float, inclusion_probabilities(probs, size))))
        return draw_cohort(able, probs / probs.sum(), size, self.rng)

    def _select(self, number: int, names: list[str], *, full: bool) -> None:
        """Ask `names` for their transferability; `full`: their scores replace everyone's (fedsa's depend on the student).

        `fedsa`: Grad-CAM maps of the latest adapted student (Scratch before round 1) on the probe images.
        `fedsa+`: the labelled probe set; each node scores its DP teacher's outputs (and fits its output map).
        """
        probe = self.probe
        request: msg.ServerMessage
        if self.settings.method == "fedsa":
            assert self.saliency_model is not None  # Scratch, set at the start of run()
            maps = gradcam_maps(self.saliency_model, probe.x)
            request = msg.SelectRequest(round=number, probe_images=probe.x, student_maps=maps, student=self.architecture)
        else:
            request = msg.OutputSelectRequest(round=number, probe_images=probe.x, probe_labels=probe.y,
                                              num_classes=probe.num_classes, student=self.architecture)
        for name in names:
            self.channel.send(name, request)
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
        if len(self.scores) < max(self.settings.cohort_size, self.settings.min_cohort):
            raise AbortRound(f"only {len(self.scores)} nodes have a transferability score in round {number}")
        ordered = sorted(self.scores)
        values = [self.scores[n] for n in ordered]
        if self.settings.selection != "scores":  # every node alike: FedAvg+ takes them all, Random draws uniformly
            probabilities = np.full(len(ordered), 1.0 / len(ordered))
        elif self.settings.method == "fedsa":
            probabilities = selection_probabilities(values)
        else:
            probabilities = concentrated_probabilities(values, self.settings.temperature, self.settings.top_k)
        self.probabilities = dict(zip(ordered, map(float, probabilities)))

    def _gather(self, names: Iterable[str], expect: type | tuple[type, ...], number: int) -> dict[str, msg.ClientMessage]:
        """Each node's answer of an `expect` type; a node that aborts instead is reported and not waited for."""
        kinds = (expect if isinstance(expect, tuple) else (expect,)) + (msg.Abort,)
        answers = self.channel.collect(names, kinds, self.settings.stage_timeout, round=number)
        for name, answer in list(answers.items()):
            if isinstance(answer, msg.Abort):
                self.report(f"round {number}: {name} left: {answer.reason}")
                del answers[name]
        return answers

    def _secure_round(self, number: int, cohort: list[str]) -> list[str]:
        """Send the student to the cohort, securely sum their unweighted updates, and add the survivors' mean to it."""
        started = time.perf_counter()
        state = backbone_state(self.student, self.parts)
        context = round_context(self.architecture.digest, state_digest(state))
        config = self._secagg_config(number, cohort, flatten_state(state).size, context)
        for name in cohort:
            self.channel.send(name, msg.TrainRequest(round=number, student_state=state, secagg=config))
        # With the CA, the server drops a node whose signature fails instead of forwarding it.
        server = SecAggServer(config, self.anchor)
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
            self.channel.send(name, roster)
        for name, reply in self._gather(members, sa.ShareKeys, number).items():
            _accept(server.receive_shares, reply, name)
        deliveries = server.deliveries()
        for name, delivery in deliveries.items():
            self.channel.send(name, delivery)
        masked = self._gather(deliveries, sa.MaskedInput, number)
        for name, reply in masked.items():
            _accept(server.receive_masked, reply, name)
        self._dump_masked(number, masked)
        check = server.consistency_request()
        for name in check.survivors:
            self.channel.send(name, check)
        for name, reply in self._gather(check.survivors, sa.ConsistencyCheckResponse, number).items():
            _accept(server.receive_consistency, reply, name)
        request = server.unmask_request()
        signers = [signer for signer, _ in request.signatures]
        for name in signers:
            self.channel.send(name, request)
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
        s = self.settings
        spec = sa.QuantizationSpec(clip=s.clip, level_bits=s.level_bits)
        return sa.RoundConfig(
            round=number,
            participants=tuple(sorted(cohort)),
            threshold=s.threshold_for(len(cohort)),
            vector_length=length,
            quantization=spec,
            modulus_bits=required_modulus_bits(len(cohort), spec.level_bits),
            nonce=random_bytes(32),
            context=context,
        )

    def _progress_line(self, record: RoundRecord) -> str:
        cohort = " ".join(f"{n}:{record.inclusion.get(n, 0):.0%}" for n in record.cohort)
        spent = " ".join(f"{n}={r.epsilon:.2f}" for n, r in self.nodes.items())
        accuracy = "-" if record.accuracy is None else f"{record.accuracy:.4f}"
        return (
            f"round {record.round}/{self.settings.rounds} | cohort {cohort} (chance of being drawn) | epsilon {spent} | "
            f"accuracy {accuracy} | {record.seconds:.1f}s"
        )

    def _checkpoint(self, number: int) -> str:
        """The amalgamated student after round `number` (before adaptation), for resuming and for checking sums; its
        SHA-256 ("" without a checkpoint directory)."""
        if self.checkpoints is None:
            return ""
        path = self.checkpoints / f"student-r{number}.pt"
        atomic_torch_save(self.student.state_dict(), path)
        return sha256(path.read_bytes()).hex()

    def _dump(self, name: str, array: np.ndarray) -> None:
        if self.dump_dir is not None:
            Path(self.dump_dir).mkdir(parents=True, exist_ok=True)
            np.save(Path(self.dump_dir) / name, array)

    def _dump_masked(self, number: int, masked: dict[str, msg.ClientMessage]) -> None:
        for name, reply in masked.items():
            assert isinstance(reply, sa.MaskedInput)
            self._dump(f"masked-r{number}-{name}.npy", np.frombuffer(reply.packed, dtype=np.uint8))


def _accept(receive: Callable[[Any], None], message: Any, sender: str) -> None:
    """Feed one node's message to the secagg server; a bad message drops that node, not the round."""
    try:
        claimed = getattr(message, "sender", sender)
        if claimed != sender:
            raise ProtocolError(f"message claims sender {claimed!r} but arrived over {sender!r}'s identity")
        receive(message)
    except (ProtocolError, IntegrityError) as exc:
        log.warning("dropping %s from the round: %s", sender, exc)
