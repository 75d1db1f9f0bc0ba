"""One node: its records, its DP teacher, a DP trainer, its privacy ledger and a secagg client.

Every use of the node's records is DP-SGD whose charge is in the node's ledger before anything
derived from it leaves: the teacher's training (once per record set, at start) and every
distillation round. Everything else the node sends is computed from those DP releases, from what
the aggregator sent, or from the ledger: transferability scores and output maps are
post-processing of the DP teacher on the aggregator's own probe images.

The node defends its guarantee whatever the aggregator sends: it refuses a round with fewer
participants or a lower threshold than its own minimum, a model that is not the one the round's
session binds, a second selection request in a round, and malformed arrays, each with an Abort
that says why. The aggregator's first selection request fixes the method for the whole run
(one accountant, one objective): a Grad-CAM `SelectRequest` means faithful `fedsa` (FitNets
features, backbone released); an `OutputSelectRequest` means `fedsa+` (LogME score, output
distillation through a map fitted here on the probe labels, backbone and head released).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedsa_secure import messages as msg
from fedsa_secure.checks import check_labels, check_maps, check_records, check_state
from fedsa_secure.config import DP_RUN, NodeConfig, NodeSection, PrivacySection, TeacherSection
from fedsa_secure.crypto import SYSTEM, Randomness
from fedsa_secure.data import LabelledSet, NodeData, task_input
from fedsa_secure.data.records import configured_records
from fedsa_secure.errors import ConfigError, FedsaError, LedgerError, ProtocolError
from fedsa_secure.fedsa.distill import DistillationPlan, DPDistiller, DPSettings, FeatureObjective, Objective, feature_teacher
from fedsa_secure.fedsa.nonprivate import PlainTrainer
from fedsa_secure.fedsa.output_kd import OutputKDSettings, OutputObjective, fit_output_map
from fedsa_secure.fedsa.saliency import gradcam_maps, transferability
from fedsa_secure.fedsa.select_plus import output_transferability
from fedsa_secure.fedsa.teacher import (
    DPTrainedTeacher,
    NonPrivateTeacher,
    PublicTeacher,
    TeacherPrivacy,
    TeacherSource,
    TrainTeacher,
    load_teacher_file,
    node_teacher,
)
from fedsa_secure.models import (
    HeadedBackbone,
    architecture_digest,
    backbone_state,
    make_teacher,
    round_context,
    state_digest,
    student_names,
    use_student,
)
from fedsa_secure.privacy.accounting import fits_budget
from fedsa_secure.privacy.dpsgd import Mechanism
from fedsa_secure.privacy.state import PrivacyState
from fedsa_secure.secagg import messages as sa
from fedsa_secure.secagg.client import SecAggClient
from fedsa_secure.secagg.identity import Credentials
from fedsa_secure.secagg.session import validate_config
from fedsa_secure.transport.client import AggregatorClient
from fedsa_secure.transport.tls import TlsFiles

log = logging.getLogger("fedsa_secure.node")
SECAGG_STAGES = (sa.Roster, sa.ShareDelivery, sa.ConsistencyCheckRequest, sa.UnmaskRequest)


@dataclass(frozen=True)
class Defence:
    """The smallest secure sum a node takes part in, whatever the aggregator asks (config: node.min_*)."""

    min_participants: int = 3
    min_threshold: int = 3


class Node:
    """A node's answers to the aggregator's requests, transport-free: `respond` maps one request to its replies.

    `Node.from_config` builds a deployed node (its records, its TLS identity, its state_dir); the
    constructor builds one from parts, for in-process federations. `dp=False` (experiments' plaintext
    arm only, never reachable from a config) trains without DP and keeps no ledger: nothing such a
    node releases is private. `mechanism_seed` makes the DP noise reproducible and `randomness` the
    secure-aggregation keys: both for tests and simulations only.
    """

    def __init__(
        self,
        name: str,
        data: NodeData,
        settings: DPSettings,
        *,
        seed: int = 0,
        state_dir: Path | None = None,
        teacher: TeacherSource | HeadedBackbone | None = None,
        teacher_share: float = PrivacySection.teacher_share,
        accept_non_private_teacher: bool = False,
        credentials: Credentials | None = None,
        defence: Defence = Defence(),
        dp: bool = True,
        kd: OutputKDSettings | None = None,
        mechanism_seed: int | None = None,
        randomness: Randomness = SYSTEM,
        dump_dir: Path | None = None,
    ) -> None:
        self.name, self.data, self.settings, self.seed = name, data, settings, seed
        self.dp, self.kd, self.defence = dp, kd, defence
        self._credentials = credentials
        self._randomness = randomness
        self._mechanism_seed = None if mechanism_seed is None else mechanism_seed + 2
        started = time.perf_counter()
        teacher = TrainTeacher() if teacher is None else teacher
        if dp:
            if state_dir is None or isinstance(teacher, nn.Module):
                raise ConfigError(f"{name}: a DP node needs a state_dir and a teacher with a declared provenance")
            if isinstance(teacher, NonPrivateTeacher) and not accept_non_private_teacher:
                raise ConfigError(
                    f"{name}: its teacher is declared trained on its records without DP, which leaves those records "
                    "unprotected; accept that explicitly (accept_non_private_teacher=True) or train the teacher with DP"
                )
            self.state: PrivacyState | None = PrivacyState.open(state_dir, name, data.train)
            self._log_state(state_dir)
            privacy = TeacherPrivacy(teacher_share * settings.target_epsilon, settings.delta, settings.accountant)
            self.teacher = node_teacher(self.state, data, teacher, privacy, settings.target_epsilon, seed,
                                        mechanism_seed=mechanism_seed)
            self.plan: DistillationPlan | None = DistillationPlan.make(len(data.train), settings, self.state.teacher_history())
            log.info("%s: DP teacher for task %s ready in %.1fs; epsilon %.4f of %g spent", name, data.task,
                     time.perf_counter() - started, self.state.epsilon(), settings.target_epsilon)
        else:
            if not isinstance(teacher, nn.Module):
                raise ConfigError(f"{name}: a node without DP is given its (non-private) teacher")
            self.state, self.teacher, self.plan = None, teacher, None
            log.info("%s: NO DP: nothing this node releases is private (experiments' plaintext arm only)", name)
        self.method: str | None = None  # fixed by the first selection request, with the student's architecture
        self.architecture: msg.StudentArchitecture | None = None
        self.distiller: DPDistiller | PlainTrainer | None = None
        self.released: tuple[str, ...] = ()
        self._expected_state: dict[str, tuple[int, ...]] = {}  # names and shapes of the parameters it trains
        self._score: float | None = None  # fedsa+: LogME does not depend on the student; computed once
        self._selected_round = 0  # the last round whose selection request this node answered
        self.dump_dir = dump_dir
        if dump_dir is not None:
            log.warning("%s: TEST MODE: plaintext updates are written to %s", name, dump_dir)
        self._secagg: SecAggClient | None = None
        self._update: np.ndarray | None = None
        self._round = 0

    @classmethod
    def from_config(
        cls, config: NodeConfig, *, data: NodeData | None = None, mechanism_seed: int | None = None,
        randomness: Randomness = SYSTEM,
    ) -> Node:
        """A deployed node: its TLS identity checked first (name = certificate), then its records and state."""
        name = config.node.name
        tls = TlsFiles(config.tls.ca_cert, config.tls.cert, config.tls.key)
        ca, cert, key = tls.load()  # fail on a bad key file now, not after training the teacher
        if (certified := tls.common_name()) != name:
            raise ConfigError(
                f"node.name is {name!r} but this node's certificate ({config.tls.cert}) is issued to {certified!r}: "
                "set node.name to the certificate's name, or use the certificate issued to this node"
            )
        if config.node.student is not None:
            use_student(config.node.student)  # the one student of its own code this node builds when asked
        privacy = config.privacy
        settings = DPSettings(target_epsilon=privacy.target_epsilon, delta=privacy.delta, planned_rounds=privacy.planned_rounds,
                              local_epochs=privacy.local_epochs, accountant=privacy.accountant)
        if data is None:
            data = configured_records(config)
        teacher, data = _teacher_source(config.teacher, data, settings)
        return cls(
            name, data, settings, seed=config.data.seed, teacher=teacher,
            accept_non_private_teacher=config.teacher.accept_non_private,
            state_dir=config.node.state_dir, teacher_share=privacy.teacher_share, credentials=Credentials.from_pem(ca, cert, key),
            defence=Defence(config.node.min_participants, config.node.min_threshold), mechanism_seed=mechanism_seed,
            randomness=randomness, dump_dir=config.testing.dump_dir,
        )

    def _log_state(self, state_dir: Path) -> None:
        state = self.state
        assert state is not None
        if state.ledger.rolled_back:
            log.warning("%s: rolled back a ledger line that a crash cut short (its update never left)", self.name)
        log.info("%s: ledger %s verified: %d entries, epsilon %.4f spent on these records so far",
                 self.name, state.ledger.path, len(state.ledger), state.epsilon())
        if state.other_record_sets:
            log.warning(
                "%s: %s also holds ledgers for %d other record set(s) (%s); records they share with these ones "
                "are charged in each ledger, and their epsilons add up", self.name, state_dir,
                len(state.other_record_sets), ", ".join(state.other_record_sets),
            )

    def join(self) -> msg.Join:
        """What the node says when it (re)connects: the privacy status its ledger gives."""
        return msg.Join(self._status())

    def rejoin(self) -> msg.Join:
        """A new aggregator process: forget the last one's run (method, selections, round in flight), keep the ledger."""
        log.info("%s: the aggregator restarted; joining it again", self.name)
        self.method, self.distiller, self.released, self._expected_state, self._score = None, None, (), {}, None
        self.architecture = None
        self._selected_round, self._secagg, self._update, self._round = 0, None, None, 0
        return self.join()

    def respond(self, request: msg.ServerMessage) -> tuple[int, list[msg.ClientMessage]]:
        """The replies to one request, tagged with the round they answer (secagg stages: the round trained)."""
        answering = getattr(request, "round", self._round)
        return answering, self.handle(request)

    def handle(self, request: msg.ServerMessage) -> list[msg.ClientMessage]:
        """Answer one request; anything refused or failed becomes an Abort with the reason, never a crash."""
        answering = getattr(request, "round", self._round)
        if self._secagg is None and self._round == 0 and isinstance(request, SECAGG_STAGES):
            # Queued for this node's previous process (it restarted mid-round): no round of this process to leave.
            log.info("%s: ignoring a %s queued before this process started", self.name, type(request).__name__)
            return []
        try:
            match request:
                case msg.Wait() | msg.Shutdown():
                    return []
                case msg.SelectRequest():
                    return [self._select(request), self._status()]
                case msg.OutputSelectRequest():
                    return [self._select_outputs(request), self._status()]
                case msg.TrainRequest():
                    return [self._train(request)]
                case sa.Roster():
                    return [self._client().share_keys(request)]
                case sa.ShareDelivery():
                    client = self._client()
                    assert self._update is not None  # set together with the client in _train
                    return [client.masked_input(request, self._update)]
                case sa.ConsistencyCheckRequest():
                    return [self._client().consistency_check(request)]
                case sa.UnmaskRequest():
                    response = self._client().unmask(request)
                    self._secagg, self._update = None, None
                    return [response, self._status()]
        except FedsaError as exc:
            log.warning("%s: leaving round %d: %s", self.name, answering, exc)
            reason = str(exc)
        except Exception as exc:  # a bug, not the aggregator's fault: keep serving, but say so loudly
            log.exception("%s: failed to answer %s", self.name, type(request).__name__)
            reason = f"internal error answering {type(request).__name__} ({type(exc).__name__}); see the node's log"
        self._secagg, self._update = None, None
        return [msg.Abort(round=answering, reason=f"{self.name}: {reason}")]

    def _client(self) -> SecAggClient:
        if self._secagg is None:
            raise ProtocolError("secure-aggregation message outside a round this node joined")
        return self._secagg

    def _start(self, method: str, objective: Objective) -> None:
        """Fix the method and build the run's trainer: DP, its accountant starting from the ledger (or plaintext)."""
        if self.state is None:
            self.distiller = PlainTrainer(objective, self.settings, seed=self._mechanism_seed or 0)
        else:
            self.distiller = DPDistiller(
                self.teacher, self.data, self.settings, seed=self.seed, objective=objective,
                ledger_history=self.state.history(), teacher_history=self.state.teacher_history(),
                mechanism_seed=self._mechanism_seed,
            )
            if self.distiller.plan != self.plan:
                raise AssertionError("the trainer's mechanism differs from the node's plan")
        self.method, self.released = method, objective.released
        self._expected_state = {k: v.shape for k, v in backbone_state(objective.module, objective.released).items()}
        log.info("%s: running %s; releases %s", self.name, method, " + ".join(self.released))

    def _check_method(self, method: str, student: msg.StudentArchitecture) -> bool:
        """True if the method still has to be started; a switch of method or student mid-run is refused (the accountant
        and the proxy span the run), and so is a student this node does not build or builds differently."""
        if self.method is not None and (self.method, self.architecture) != (method, student):
            raise ProtocolError(f"{self.name} runs {self.method} with student {self.architecture and self.architecture.name!r} "
                                f"for this whole run; the aggregator now asks for {method} with {student.name!r}")
        if self.method is None:
            if student.name not in student_names():
                raise ProtocolError(
                    f"the aggregator asks for student {student.name!r}, which {self.name} does not build (it builds "
                    f"{', '.join(student_names())}): name the same student in node.student as the aggregator's federation.student"
                )
            if architecture_digest(student.name, student.num_classes) != student.digest:
                raise ProtocolError(
                    f"student {student.name!r} as built by {self.name} differs from the aggregator's (their architecture "
                    "digests differ): both parties need the same version of its code"
                )
            self.architecture = student
        return self.method is None

    def _check_selection_round(self, round_number: int) -> None:
        """One selection answer per round: a request for a round already answered (or an earlier one) is refused."""
        if round_number <= self._selected_round:
            raise ProtocolError(
                f"selection request for round {round_number} refused: this node answered one for round "
                f"{self._selected_round} already (one answer per round)"
            )

    def _select(self, request: msg.SelectRequest) -> msg.SelectReply:
        """`fedsa`: Grad-CAM transferability of the DP teacher on the aggregator's probe images."""
        self._check_selection_round(request.round)
        images = check_records(request.probe_images, self.data.train.x.shape[1:], "SelectRequest.probe_images")
        maps = check_maps(request.student_maps, len(images), "SelectRequest.student_maps")
        teacher = feature_teacher(self.teacher)
        if self._check_method("fedsa", request.student):
            self._start("fedsa", FeatureObjective(teacher, self.data, self.seed, arch=request.student.name))
        teacher_maps = gradcam_maps(teacher, task_input(self.data.task, images), size=maps.shape[-1])
        score = transferability(maps, teacher_maps)
        self._selected_round = request.round
        log.info("%s: round %d transferability %.4f (post-processing of the DP teacher)", self.name, request.round, score)
        return msg.SelectReply(round=request.round, transferability=float(score))

    def _select_outputs(self, request: msg.OutputSelectRequest) -> msg.SelectReply:
        """`fedsa+`: LogME of the DP teacher's logits on the probe set; the output map fitted here stays here."""
        self._check_selection_round(request.round)
        where = "OutputSelectRequest"
        images = check_records(request.probe_images, self.data.train.x.shape[1:], f"{where}.probe_images")
        labels = check_labels(request.probe_labels, len(images), request.num_classes, f"{where}.probe_labels")
        if self._check_method("fedsa+", request.student):
            probe = LabelledSet(images, labels, request.num_classes)
            initial = make_teacher(self.data.train.num_classes, self.seed, self.data.train.x.shape[1:])  # where training started
            self._score = output_transferability(self.teacher, self.data.task, probe, initial)
            output_map = fit_output_map(self.teacher, self.data.task, probe)
            self._start("fedsa+", OutputObjective(self.teacher, self.data, output_map, self.seed, self.kd, arch=request.student.name))
            log.info("%s: LogME transferability %.4f (post-processing of the DP teacher)", self.name, self._score)
        assert self._score is not None
        self._selected_round = request.round
        return msg.SelectReply(round=request.round, transferability=self._score)

    def _check_round(self, request: msg.TrainRequest) -> None:
        """Refuse, before any training, a round this node's own configuration or the protocol does not allow."""
        config, node = request.secagg, self.defence
        where = f"round {request.round} refused"
        if config.round != request.round:
            raise ProtocolError(f"{where}: its secure-aggregation config is for round {config.round}")
        try:
            validate_config(config)  # what SecAggClient checks too, but before this node spends anything
        except ProtocolError as exc:
            raise ProtocolError(f"{where}: {exc}") from None
        if len(config.participants) < node.min_participants:
            raise ProtocolError(
                f"{where}: {len(config.participants)} participants; {self.name} takes part only in secure sums of "
                f"at least {node.min_participants} (node.min_participants)"
            )
        if config.threshold < node.min_threshold:
            raise ProtocolError(
                f"{where}: threshold {config.threshold}; {self.name} accepts no threshold below {node.min_threshold} "
                "(node.min_threshold)"
            )
        if self.name not in config.participants:
            raise ProtocolError(f"{where}: {self.name} is not among its participants")
        check_state(request.student_state, self._expected_state, f"{where}: the student sent for {self.method}")
        length = sum(int(np.prod(shape)) for shape in self._expected_state.values())
        if config.vector_length != length:
            raise ProtocolError(f"{where}: vector_length {config.vector_length}, but {self.method} releases {length} numbers")
        assert self.architecture is not None  # fixed with the method, before any training request is taken
        if config.context != round_context(self.architecture.digest, state_digest(request.student_state)):
            raise ProtocolError(
                f"{where}: the model sent is not the one the round's session binds (its digest and the student's "
                "architecture differ from the config's context); nodes sent different models must not complete a round together"
            )

    def _train(self, request: msg.TrainRequest) -> msg.ClientMessage:
        self._round = request.round
        if self.distiller is None:
            raise ProtocolError(f"{self.name} was asked to train in round {request.round} before any selection request")
        self._check_round(request)
        started = time.perf_counter()
        if isinstance(self.distiller, PlainTrainer):
            update = self.distiller.train_round(request.student_state)
        elif not self.distiller.fits_budget():
            reason = (
                f"{self.name} declines round {request.round}: one more round would spend epsilon "
                f"{self.distiller.epsilon_if_trained():.3f} > budget {self.settings.target_epsilon}"
            )
            log.info(reason)
            return msg.Decline(round=request.round, reason=reason)
        else:
            update = self._train_dp(request)
        log.info("%s: round %d trained in %.1fs", self.name, request.round, time.perf_counter() - started)
        self._update = update  # float32 into masking, unweighted: the aggregator divides the sum
        if self.dump_dir is not None:
            Path(self.dump_dir).mkdir(parents=True, exist_ok=True)
            np.save(Path(self.dump_dir) / f"update-r{request.round}-{self.name}.npy", self._update)
        # With credentials it signs its keys and the survivor set, and checks its peers' against the CA.
        self._secagg = SecAggClient(self.name, request.secagg, self._credentials, self._randomness)
        return self._secagg.advertise()

    def _train_dp(self, request: msg.TrainRequest) -> np.ndarray:
        """One DP-SGD round, its charge written to the ledger before the update is returned (write-ahead)."""
        assert isinstance(self.distiller, DPDistiller) and self.state is not None
        result = self.distiller.train_round(request.student_state)
        try:
            self.state.charge("distillation", request.round, result.mechanism, self.settings.target_epsilon, method=self.method)
        except LedgerError:
            self.distiller.sync(self.state.history())  # not written, not released: not charged
            raise
        log.info("%s: round %d charged; epsilon %.3f", self.name, request.round, self.state.epsilon())
        return result.update

    def _fits_next_round(self) -> bool:
        if self.state is None or self.plan is None:
            return True
        plan, s = self.plan, self.settings
        return fits_budget(self.state.history(), plan.noise_multiplier, plan.sample_rate, plan.steps_per_round,
                           s.target_epsilon, s.delta, s.accountant)

    def _status(self) -> msg.PrivacyStatus:
        """What the ledger says: the only privacy figures that ever leave the node (zeros without DP)."""
        head = self.state.ledger.head if self.state is not None else None
        return msg.PrivacyStatus(
            round=self._round,
            epsilon=self.state.epsilon() if self.state is not None else 0.0,
            delta=self.settings.delta,
            target_epsilon=self.settings.target_epsilon,
            rounds_trained=len(self.state.entries("distillation")) if self.state is not None else 0,
            fits_next_round=self._fits_next_round(),
            ledger_entries=head.entries if head is not None else 0,
            ledger_head=(head.head or "") if head is not None else "",
        )


def _teacher_source(section: TeacherSection, data: NodeData, settings: DPSettings) -> tuple[TeacherSource, NodeData]:
    """The teacher a config names, with the records relabelled to a teacher file's outputs."""
    if section.file is None:
        return TrainTeacher(), data
    model, data = load_teacher_file(section.file, data, section.factory)
    if section.provenance == "public":
        return PublicTeacher(model), data
    if section.provenance == "non-private":
        return NonPrivateTeacher(model), data
    run = {key: getattr(section, key) for key in DP_RUN}  # all set: load_node_config checks it
    mechanism = Mechanism(float(run["noise_multiplier"]), float(run["sample_rate"]), int(run["steps"]),
                          float(run["max_grad_norm"]), settings.delta, settings.accountant)
    return DPTrainedTeacher(model, mechanism), data


def serve(node: Node, config: NodeSection, tls: TlsFiles) -> None:
    """The node's side of a networked federation: dial the aggregator, join, answer until it says the run is over."""
    with AggregatorClient(config.aggregator, tls, rpc_timeout=config.rpc_timeout, server_name=config.server_name,
                          reconnect_for=config.reconnect_timeout) as client:
        log.info("%s: connected to %s", node.name, config.aggregator)
        client.send(node.join())
        known = 0
        while True:
            request = client.poll(wait=config.poll_wait)
            if known and client.server_epoch != known:
                client.send(node.rejoin())
            known = client.server_epoch
            if isinstance(request, msg.Shutdown):
                log.info("%s: aggregator ended the run: %s", node.name, request.reason)
                return
            answering, replies = node.respond(request)
            for reply in replies:
                client.send(reply, round=answering)


def run_node(config: NodeConfig) -> None:
    torch.set_num_threads(1)  # several node processes share the machine's cores
    serve(Node.from_config(config), config.node, TlsFiles(config.tls.ca_cert, config.tls.cert, config.tls.key))
