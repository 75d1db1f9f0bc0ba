"""One node: its teacher, its private data, a DP trainer, a privacy ledger and a secagg client.

The node dials the aggregator and answers what it is asked. Nothing about the teacher or
the data leaves except one transferability scalar per selection and the masked proxy update.
The aggregator's first selection request fixes the method for the whole run (one accountant,
one objective): a Grad-CAM `SelectRequest` means faithful `fedsa` (FitNets features, backbone
released); an `OutputSelectRequest` means `fedsa+` (LogME score, output distillation through a
map fitted here on the probe labels, backbone and head released).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from fedsa_secure import messages as msg
from fedsa_secure.config import NodeConfig
from fedsa_secure.data import LabelledSet, federation, task_input
from fedsa_secure.errors import FedsaError, ProtocolError
from fedsa_secure.fedsa.distill import DPDistiller, DPSettings, FeatureObjective, Objective
from fedsa_secure.fedsa.output_kd import OutputObjective, fit_output_map
from fedsa_secure.fedsa.saliency import gradcam_maps, transferability
from fedsa_secure.fedsa.select_plus import output_transferability
from fedsa_secure.fedsa.teacher import load_or_train_teacher
from fedsa_secure.models import backbone_state
from fedsa_secure.privacy.accounting import library_versions
from fedsa_secure.privacy.ledger import Ledger
from fedsa_secure.secagg import messages as sa
from fedsa_secure.secagg.client import SecAggClient
from fedsa_secure.secagg.identity import Credentials
from fedsa_secure.transport.client import AggregatorClient
from fedsa_secure.transport.tls import TlsFiles

log = logging.getLogger("fedsa_secure.node")


class Node:
    """Serves the aggregator's requests until it says the run is over."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.node.name
        self.tls = TlsFiles(config.tls.ca_cert, config.tls.cert, config.tls.key)
        self.tls.load()  # fail on a bad key file now, not after training the teacher
        run_dir = Path(config.node.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        dataset = config.data.dataset
        self.data = federation(dataset).node(self.name, config.data.seed)
        started = time.perf_counter()
        teacher_file = run_dir / "teachers" / f"{dataset}-{self.name}.pt"
        self.teacher = load_or_train_teacher(self.data, teacher_file, config.data.seed)
        log.info("%s: teacher for task %s ready in %.1fs", self.name, self.data.task, time.perf_counter() - started)
        self.method: str | None = None  # fixed by the first selection request
        self.distiller: DPDistiller | None = None
        self.released: tuple[str, ...] = ()
        self._expected_state: dict[str, tuple[int, ...]] = {}  # names and shapes of the parameters it trains
        self._score: float | None = None  # fedsa+: LogME does not depend on the student; computed once
        self.ledger = Ledger(run_dir / "ledgers" / f"{self.name}.jsonl")
        self.dump_dir = config.testing.dump_dir
        if self.dump_dir is not None:
            log.warning("%s: TEST MODE: plaintext updates are written to %s", self.name, self.dump_dir)
        self._secagg: SecAggClient | None = None
        self._update: np.ndarray | None = None
        self._round = 0

    def run(self) -> None:
        node = self.config.node
        with AggregatorClient(node.aggregator, self.tls, rpc_timeout=node.rpc_timeout, server_name=node.server_name) as client:
            log.info("%s: connected to %s", self.name, node.aggregator)
            while True:
                request = client.poll(wait=node.poll_wait)
                if isinstance(request, msg.Shutdown):
                    log.info("%s: aggregator ended the run: %s", self.name, request.reason)
                    return
                answering = getattr(request, "round", self._round)  # secagg stages belong to the round trained
                for reply in self._handle(request):
                    client.send(reply, round=answering)

    def _handle(self, request: msg.ServerMessage) -> list[msg.ClientMessage]:
        """Answer one request; a protocol violation drops this node from the round, never crashes it."""
        try:
            match request:
                case msg.Wait():
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
            log.warning("%s: leaving round %d: %s", self.name, self._round, exc)
            self._secagg, self._update = None, None
        return []

    def _client(self) -> SecAggClient:
        if self._secagg is None:
            raise ProtocolError("secure-aggregation message outside a round this node joined")
        return self._secagg

    def _start(self, method: str, objective: Objective) -> None:
        """Fix the method and build the run's single DP trainer (one accountant for every round)."""
        privacy = self.config.privacy
        settings = DPSettings(
            target_epsilon=privacy.target_epsilon,
            delta=privacy.delta,
            planned_rounds=privacy.planned_rounds,
            local_epochs=privacy.local_epochs,
            accountant=privacy.accountant,
        )
        self.distiller = DPDistiller(self.teacher, self.data, settings, seed=self.config.data.seed, objective=objective)
        self.method, self.released = method, objective.released
        self._expected_state = {k: v.shape for k, v in backbone_state(objective.module, objective.released).items()}
        log.info("%s: running %s; releases %s", self.name, method, " + ".join(self.released))

    def _check_method(self, method: str) -> bool:
        """True if the method still has to be started; a switch mid-run is refused (the accountant spans the run)."""
        if self.method is not None and self.method != method:
            raise ProtocolError(f"{self.name} runs {self.method} for this whole run; the aggregator now asks for {method}")
        return self.method is None

    def _select(self, request: msg.SelectRequest) -> msg.SelectReply:
        if self._check_method("fedsa"):
            self._start("fedsa", FeatureObjective(self.teacher, self.data, self.config.data.seed))
        maps = gradcam_maps(self.teacher, task_input(self.data.task, request.probe_images), size=request.student_maps.shape[-1])
        score = transferability(request.student_maps, maps)
        log.info("%s: round %d transferability %.4f", self.name, request.round, score)
        return msg.SelectReply(round=request.round, transferability=float(score))

    def _select_outputs(self, request: msg.OutputSelectRequest) -> msg.SelectReply:
        """`fedsa+`: LogME of the teacher's logits on the probe set; the output map fitted here stays here."""
        if self._check_method("fedsa+"):
            probe = LabelledSet(request.probe_images, request.probe_labels, request.num_classes)
            if probe.x.shape[1:] != self.data.train.x.shape[1:]:
                raise ProtocolError(
                    f"probe images have shape {probe.x.shape[1:]} but this node's records {self.data.train.x.shape[1:]}: "
                    f"is the aggregator running another dataset than {self.config.data.dataset}?"
                )
            self._score = output_transferability(self.teacher, self.data.task, probe)
            output_map = fit_output_map(self.teacher, self.data.task, probe)
            self._start("fedsa+", OutputObjective(self.teacher, self.data, output_map, self.config.data.seed))
            log.info("%s: LogME transferability %.4f", self.name, self._score)
        assert self._score is not None
        return msg.SelectReply(round=request.round, transferability=self._score)

    def _train(self, request: msg.TrainRequest) -> msg.ClientMessage:
        self._round = request.round
        if self.distiller is None:
            raise ProtocolError(f"{self.name} was asked to train in round {request.round} before any selection request")
        shapes = {k: v.shape for k, v in request.student_state.items()}
        if shapes != self._expected_state:
            missing, extra = sorted(set(self._expected_state) - set(shapes)), sorted(set(shapes) - set(self._expected_state))
            raise ProtocolError(
                f"round {request.round}: the student parameters sent do not match what {self.method} trains "
                f"({' + '.join(self.released)}): missing {missing}, unexpected {extra}, or shapes differ"
            )
        if not self.distiller.fits_budget():
            reason = (
                f"{self.name} declines round {request.round}: one more round would spend epsilon "
                f"{self.distiller.epsilon_if_trained():.3f} > budget {self.config.privacy.target_epsilon}"
            )
            log.info(reason)
            return msg.Decline(round=request.round, reason=reason)
        started = time.perf_counter()
        result = self.distiller.train_round(request.student_state)
        self.ledger.append(  # write-ahead: the charge is on disk before the update can leave
            {
                "node": self.name,
                "round": request.round,
                "method": self.method,
                "time": time.time(),
                "noise_multiplier": result.noise_multiplier,
                "sample_rate": result.sample_rate,
                "steps": result.steps,
                "max_grad_norm": result.max_grad_norm,
                "delta": result.delta,
                "accountant": result.accountant,
                "epsilon": result.epsilon,
                "target_epsilon": self.config.privacy.target_epsilon,
                "versions": library_versions(),
            }
        )
        log.info(
            "%s: round %d trained in %.1fs, loss %.4f, epsilon %.3f",
            self.name, request.round, time.perf_counter() - started, result.train_loss, result.epsilon,
        )
        self._update = result.update.astype(np.float32, copy=False) * np.float32(request.weight)  # float32 into masking
        if self.dump_dir is not None:
            Path(self.dump_dir).mkdir(parents=True, exist_ok=True)
            np.save(Path(self.dump_dir) / f"update-r{request.round}-{self.name}.npy", self._update)
        # Signs its keys and the survivor set with its TLS key; checks peers' against the CA.
        self._secagg = SecAggClient(self.name, request.secagg, Credentials.from_pem(*self.tls.load()))
        return self._secagg.advertise()

    def _status(self) -> msg.PrivacyStatus:
        assert self.distiller is not None  # a status follows a selection or a round, both after _start
        return msg.PrivacyStatus(
            round=self._round,
            epsilon=float(self.distiller.epsilon),
            delta=self.config.privacy.delta,
            target_epsilon=self.config.privacy.target_epsilon,
            rounds_trained=self.distiller.rounds_trained,
            fits_next_round=self.distiller.fits_budget(),
            ledger_entries=self.ledger.head.entries,
            ledger_head=self.ledger.head.head or "",
        )


def run_node(config: NodeConfig) -> None:
    torch.set_num_threads(1)  # several node processes share the machine's cores
    Node(config).run()
