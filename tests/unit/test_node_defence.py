"""A node defends its own guarantee against a malicious aggregator, through `Node.handle` (no transport).

Real nodes of the digits federation (DP teachers trained and charged once per module, then each
test node opens a copy of that state directory: same ledger, same teacher, no retraining) are sent
what a malicious aggregator could send. Whatever a node refuses comes back as one `Abort` whose
reason names the setting or the field, and nothing is trained or charged: its ledger gains no
entry and its accountant's history does not move.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedsa_secure import messages as msg
from fedsa_secure.checks import MAX_MAP_SIDE, MAX_PROBE_RECORDS
from fedsa_secure.config import (
    DataSection,
    NodeConfig,
    NodeSection,
    PrivacySection,
    TlsConfig,
)
from fedsa_secure.crypto import TrustAnchor, pki
from fedsa_secure.crypto.rand import random_bytes
from fedsa_secure.data import LabelledSet, aggregator_data
from fedsa_secure.errors import AbortRound, IntegrityError
from fedsa_secure.fedsa.saliency import gradcam_maps
from fedsa_secure.models import (
    architecture_digest,
    backbone_state,
    flatten_state,
    make_student,
    round_context,
    state_digest,
)
from fedsa_secure.node import Node
from fedsa_secure.secagg import messages as sa
from fedsa_secure.secagg.client import SecAggClient
from fedsa_secure.secagg.identity import Credentials
from fedsa_secure.secagg.quantize import quantization_step, required_modulus_bits
from fedsa_secure.secagg.server import SecAggServer

torch.set_num_threads(1)  # 2 shared cores: every node trains DP-SGD

TRIO = ("node-1", "node-2", "node-3")
RELEASED = ("features", "head")  # what a fedsa+ node trains and releases
TARGET_EPSILON = PrivacySection().target_epsilon
SPEC = sa.QuantizationSpec(clip=1.0, level_bits=16)


# ----------------------------------------------------------------------------------------------
# Set-up: one CA, certificates, and each node's DP teacher trained (and charged) once per module
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Federation:
    root: Path
    ca_cert: Path
    certs: dict[str, tuple[Path, Path]]  # name -> (certificate, key), "aggregator" included
    templates: dict[str, Path]  # node -> a state dir whose ledger holds exactly its teacher's charge

    @property
    def anchor(self) -> TrustAnchor:
        return TrustAnchor(self.ca_cert.read_bytes())


def node_config(fed: Federation, name: str, state_dir: Path, *, planned_rounds: int = 2, **node: Any) -> NodeConfig:
    cert, key = fed.certs[name]
    return NodeConfig(
        NodeSection(name=name, aggregator="127.0.0.1:1", state_dir=state_dir, **node),
        TlsConfig(fed.ca_cert, cert, key),
        DataSection(dataset="digits", seed=0),
        PrivacySection(planned_rounds=planned_rounds, local_epochs=1),
    )


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("node-defence")
    keys = root / "keys"
    keys.mkdir()
    ca_cert, ca_key = pki.create_ca(keys)
    certs = {
        name: pki.issue_certificate(ca_cert, ca_key, name, keys, hosts=("localhost",),
                                    role=pki.AGGREGATOR if name == "aggregator" else pki.NODE)
        for name in (*TRIO, "node-4", "aggregator")
    }
    partial = Federation(root, ca_cert, certs, {})
    templates = {}
    for name in TRIO:
        templates[name] = root / "templates" / name
        Node.from_config(node_config(partial, name, templates[name]), mechanism_seed=0)  # trains and charges its DP teacher
    return dataclasses.replace(partial, templates=templates)


@pytest.fixture(scope="module")
def probe() -> LabelledSet:
    return aggregator_data(0)[0]


@pytest.fixture(scope="module")
def student_maps(probe: LabelledSet) -> np.ndarray:
    """The Grad-CAM maps a `fedsa` aggregator sends with its probe images."""
    return gradcam_maps(make_student(probe.num_classes, 0), probe.x)


def student_state(seed: int = 0) -> dict[str, np.ndarray]:
    return backbone_state(make_student(10, seed), RELEASED)


CNN = msg.StudentArchitecture("cnn", 10, architecture_digest("cnn", 10))  # the student the aggregator names


def bound(state: dict[str, np.ndarray]) -> bytes:
    """The context a round binds: the student's architecture and the weights sent."""
    return round_context(CNN.digest, state_digest(state))


STATE = student_state(0)
LENGTH = int(flatten_state(STATE).size)


def round_config(
    context: bytes = bound(STATE), *, number: int = 1, participants: tuple[str, ...] = TRIO, threshold: int = 3,
    nonce: bytes | None = None, **changes: Any,
) -> sa.RoundConfig:
    """What `Aggregator._secagg_config` builds (fedsa+, digits student; pass `participants` sorted), then `changes`."""
    config = sa.RoundConfig(
        round=number,
        participants=participants,
        threshold=threshold,
        vector_length=LENGTH,
        quantization=SPEC,
        modulus_bits=required_modulus_bits(len(participants), SPEC.level_bits),
        nonce=random_bytes(32) if nonce is None else nonce,
        context=context,
    )
    return dataclasses.replace(config, **changes)


def train_request(state: dict[str, np.ndarray] = STATE, config: sa.RoundConfig | None = None, number: int = 1) -> msg.TrainRequest:
    return msg.TrainRequest(round=number, student_state=state, secagg=config or round_config(number=number))


def select_request(probe: LabelledSet, number: int = 1, **changes: Any) -> msg.OutputSelectRequest:
    request = msg.OutputSelectRequest(number, probe.x, probe.y, probe.num_classes, CNN)
    return dataclasses.replace(request, **changes)


NodeFactory = Callable[..., Node]


@pytest.fixture
def make_node(fed: Federation, probe: LabelledSet, tmp_path: Path) -> NodeFactory:
    """A fresh node on a copy of its template state (its teacher and its teacher's charge only).

    `select`: answer the aggregator's first `fedsa+` selection request (round 1), as a node must before it trains.
    """
    copies = iter(range(1_000))

    def make(name: str = "node-1", *, select: bool = True, **settings: Any) -> Node:
        state_dir = tmp_path / f"{name}-{next(copies)}"
        shutil.copytree(fed.templates[name], state_dir)
        node = Node.from_config(node_config(fed, name, state_dir, **settings), mechanism_seed=0)
        assert [e["kind"] for e in node.state.entries()] == ["teacher"]
        if select:
            reply, status = node.handle(select_request(probe))
            assert isinstance(reply, msg.SelectReply) and np.isfinite(reply.transferability)
            assert isinstance(status, msg.PrivacyStatus) and status.rounds_trained == 0
        return node

    return make


@pytest.fixture(scope="module")
def shared_node(fed: Federation, probe: LabelledSet, tmp_path_factory: pytest.TempPathFactory) -> Node:
    """node-1, selected for fedsa+, for tests that only send it requests it must refuse (they check it stays untouched)."""
    state_dir = tmp_path_factory.mktemp("shared") / "node-1"
    shutil.copytree(fed.templates["node-1"], state_dir)
    node = Node.from_config(node_config(fed, "node-1", state_dir), mechanism_seed=0)
    assert isinstance(node.handle(select_request(probe))[0], msg.SelectReply)
    return node


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What must not move when a node refuses: its ledger and its accountant."""

    entries: int
    head: str | None
    history: list[Any]

    @classmethod
    def of(cls, node: Node) -> Snapshot:
        history = list(node.distiller.history) if node.distiller is not None else []
        return cls(len(node.state.ledger), node.state.ledger.head.head, history)


def refused(node: Node, request: msg.ServerMessage) -> str:
    """The reason of the single Abort `node` answers `request` with, after checking nothing was trained or charged."""
    before = Snapshot.of(node)
    replies = node.handle(request)
    assert len(replies) == 1 and isinstance(replies[0], msg.Abort), replies
    assert replies[0].round == getattr(request, "round", replies[0].round)
    assert replies[0].reason.startswith(f"{node.name}: ")
    assert Snapshot.of(node) == before, "a refused request was trained or charged"
    return replies[0].reason


def only(replies: list[msg.ClientMessage], kind: type) -> Any:
    assert len(replies) == 1 and isinstance(replies[0], kind), replies
    return replies[0]


# ----------------------------------------------------------------------------------------------
# 1. Cohort size and threshold below the node's own minimum (and other rounds it is not part of)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(round_config(participants=("node-1", "node-2"), threshold=2),
                     ["2 participants", "at least 3 (node.min_participants)"], id="two-participants"),
        pytest.param(round_config(threshold=2), ["threshold 2", "no threshold below 3 (node.min_threshold)"],
                     id="threshold-two"),
        pytest.param(round_config(participants=("node-2", "node-3", "node-4")),
                     ["node-1 is not among its participants"], id="not-a-participant"),
        pytest.param(round_config(number=2), ["secure-aggregation config is for round 2"], id="config-of-another-round"),
    ],
)
def test_a_round_the_nodes_configuration_does_not_allow_is_refused(shared_node: Node, config: sa.RoundConfig, expected: list[str]) -> None:
    reason = refused(shared_node, train_request(config=config))
    assert "round 1 refused" in reason
    for part in expected:
        assert part in reason


def test_min_participants_is_the_nodes_own_setting(make_node: NodeFactory) -> None:
    default, strict = make_node(), make_node(min_participants=4)
    assert (default.defence.min_participants, strict.defence.min_participants) == (3, 4)
    request = train_request()

    reason = refused(strict, request)
    assert "3 participants; node-1 takes part only in secure sums of at least 4 (node.min_participants)" in reason

    history = list(default.distiller.history)
    ad = only(default.handle(request), sa.AdvertiseKeys)
    assert ad.sender == "node-1" and ad.signature and ad.certificate
    teacher, distillation = default.state.entries()
    assert (teacher["kind"], distillation["kind"], distillation["round"]) == ("teacher", "distillation", 1)
    assert teacher["epsilon"] < distillation["epsilon"] <= TARGET_EPSILON
    assert len(default.distiller.history) == len(history) + 1
    assert default._update is not None and default._update.shape == (LENGTH,)

    # The strict node takes part in a round of four.
    four = train_request(config=round_config(participants=(*TRIO, "node-4")))
    only(strict.handle(four), sa.AdvertiseKeys)
    assert [e["kind"] for e in strict.state.entries()] == ["teacher", "distillation"]


# ----------------------------------------------------------------------------------------------
# 2. The model sent must be the one the round's session binds
# ----------------------------------------------------------------------------------------------


def _flip_one_float(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    name = min(state)
    flipped = {k: v.copy() for k, v in state.items()}
    flat = flipped[name].reshape(-1)
    flat[0] = np.nextafter(flat[0], np.float32(np.inf))  # the smallest change a float32 allows
    return flipped


@pytest.mark.parametrize(
    ("state", "context"),
    [
        pytest.param(_flip_one_float(STATE), bound(STATE), id="one-float-flipped"),
        pytest.param(STATE, bound(student_state(1)), id="context-of-another-model"),
        pytest.param(student_state(1), bound(STATE), id="another-model-sent"),
        pytest.param(STATE, b"", id="no-context"),
        pytest.param(STATE, round_context(architecture_digest("resnet", 10), state_digest(STATE)), id="another-architecture"),
    ],
)
def test_a_model_other_than_the_sessions_is_refused(
    shared_node: Node, state: dict[str, np.ndarray], context: bytes
) -> None:
    assert bound(state) != context
    reason = refused(shared_node, train_request(state, round_config(context)))
    assert "the model sent is not the one the round's session binds" in reason
    assert "its digest and the student's architecture differ from the config's context" in reason


@pytest.mark.parametrize(
    ("student", "expected"),
    [
        pytest.param(msg.StudentArchitecture("os:system", 10, bytes(32)), "student 'os:system', which node-1 does not build",
                     id="code-the-node-was-not-told-to-build"),
        pytest.param(msg.StudentArchitecture("cnn", 10, architecture_digest("resnet", 10)), "differs from the aggregator's",
                     id="same-name-other-network"),
    ],
)
def test_a_student_the_node_does_not_build_as_named_is_refused(
    make_node: NodeFactory, probe: LabelledSet, student: msg.StudentArchitecture, expected: str
) -> None:
    node = make_node(select=False)
    reason = refused(node, select_request(probe, student=student))
    assert expected in reason and node.method is None and node.architecture is None


def test_a_student_switch_mid_run_is_refused(shared_node: Node, probe: LabelledSet) -> None:
    resnet = msg.StudentArchitecture("resnet", 10, architecture_digest("resnet", 10))
    reason = refused(shared_node, select_request(probe, number=50, student=resnet))
    assert "with student 'cnn' for this whole run; the aggregator now asks for fedsa+ with 'resnet'" in reason


# ----------------------------------------------------------------------------------------------
# 3. Malformed student states
# ----------------------------------------------------------------------------------------------

FIRST, LAST = min(STATE), max(STATE)
MATRIX = next(name for name in sorted(STATE) if STATE[name].ndim > 1)  # features.0.weight [16, 1, 3, 3]


def _changed(changes: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """STATE with parameters replaced, added, or (None) removed."""
    state = {k: v.copy() for k, v in STATE.items()}
    for name, value in changes.items():
        if value is None:
            del state[name]
        else:
            state[name] = value
    return state


def _with_value(name: str, value: float) -> np.ndarray:
    array = STATE[name].copy()
    array.reshape(-1)[array.size // 2] = value
    return array


NOT_FINITE = "parameter {!r} is not a finite float array"
MALFORMED_STATES = {
    "nan": (_changed({FIRST: _with_value(FIRST, np.nan)}), NOT_FINITE.format(FIRST)),
    "infinity": (_changed({LAST: _with_value(LAST, -np.inf)}), NOT_FINITE.format(LAST)),
    "integers": (_changed({LAST: STATE[LAST].astype(np.int32)}), NOT_FINITE.format(LAST)),
    "missing": (_changed({LAST: None}), f"missing [{LAST!r}], unexpected [], shapes differ for []"),
    "extra": (_changed({"head.extra": np.zeros(3, np.float32)}),
              "missing [], unexpected ['head.extra'], shapes differ for []"),
    "wrong-shape": (_changed({MATRIX: STATE[MATRIX].reshape(len(STATE[MATRIX]), -1)}),
                    f"missing [], unexpected [], shapes differ for [{MATRIX!r}]"),
}


@pytest.mark.parametrize("case", list(MALFORMED_STATES))
def test_a_malformed_student_state_is_refused(shared_node: Node, case: str) -> None:
    state, expected = MALFORMED_STATES[case]
    # The context matches what was sent: only the state's own check can refuse it.
    reason = refused(shared_node, train_request(state, round_config(bound(state))))
    assert "round 1 refused: the student sent for fedsa+" in reason
    assert expected in reason


# ----------------------------------------------------------------------------------------------
# 4. One selection answer per round
# ----------------------------------------------------------------------------------------------


def _grad_cam_request(probe: LabelledSet, maps: np.ndarray, number: int) -> msg.SelectRequest:
    return msg.SelectRequest(round=number, probe_images=probe.x, student_maps=maps, student=CNN)


@pytest.mark.parametrize("method", ["fedsa+", "fedsa"])
def test_one_selection_answer_per_round(
    make_node: NodeFactory, probe: LabelledSet, student_maps: np.ndarray, method: str
) -> None:
    def ask(number: int) -> msg.ServerMessage:
        return select_request(probe, number) if method == "fedsa+" else _grad_cam_request(probe, student_maps, number)

    node = make_node(select=False)
    reply, status = node.handle(ask(2))
    assert isinstance(reply, msg.SelectReply) and reply.round == 2 and np.isfinite(reply.transferability)
    assert isinstance(status, msg.PrivacyStatus) and node.method == method

    for number in (2, 1):  # the same round again, then an earlier one
        reason = refused(node, ask(number))
        assert f"selection request for round {number} refused: this node answered one for round 2 already" in reason
    other = _grad_cam_request(probe, student_maps, 2) if method == "fedsa+" else select_request(probe, 2)
    assert "answered one for round 2 already" in refused(node, other)  # whichever kind

    reply, status = node.handle(ask(3))
    assert isinstance(reply, msg.SelectReply) and reply.round == 3 and isinstance(status, msg.PrivacyStatus)
    assert [e["kind"] for e in node.state.entries()] == ["teacher"]


def test_requests_out_of_order_are_refused(make_node: NodeFactory, probe: LabelledSet) -> None:
    node = make_node(select=False)
    assert "asked to train in round 1 before any selection request" in refused(node, train_request())
    for stage in (sa.Roster(()), sa.ShareDelivery(()), sa.ConsistencyCheckRequest(()), sa.UnmaskRequest((), ())):
        assert "secure-aggregation message outside a round this node joined" in refused(node, stage)
    assert isinstance(node.handle(select_request(probe))[0], msg.SelectReply)  # nothing above spent round 1


# ----------------------------------------------------------------------------------------------
# 5. Malformed probes and maps
# ----------------------------------------------------------------------------------------------


def _with_pixel(images: np.ndarray, value: float) -> np.ndarray:
    images = images.copy()
    images[3, 0, 4, 4] = value
    return images


def _malformed_probes(probe: LabelledSet) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Probe images (with matching labels) and what the refusal must say."""
    many = MAX_PROBE_RECORDS + 1
    reps = -(-many // len(probe))
    return {
        "no-images": (probe.x[:0], probe.y[:0], "expected 1 to 10000 records, got 0"),
        "bigger-records": (np.zeros((len(probe), 1, 16, 16), np.float32), probe.y,
                           "expected float records of shape [1, 8, 8], got float32 [50, 1, 16, 16]"),
        "flat-records": (probe.x.reshape(len(probe), -1), probe.y, "expected float records of shape [1, 8, 8], got float32 [50, 64]"),
        "integer-pixels": (probe.x.astype(np.int64), probe.y, "expected float records of shape [1, 8, 8], got int64"),
        "nan-pixel": (_with_pixel(probe.x, np.nan), probe.y, "contains NaN or infinite values"),
        "infinite-pixel": (_with_pixel(probe.x, np.inf), probe.y, "contains NaN or infinite values"),
        "too-many": (np.tile(probe.x, (reps, 1, 1, 1))[:many], np.tile(probe.y, reps)[:many],
                     f"expected 1 to {MAX_PROBE_RECORDS} records, got {many}"),
    }


PROBE_CASES = ["no-images", "bigger-records", "flat-records", "integer-pixels", "nan-pixel", "infinite-pixel", "too-many"]


@pytest.mark.parametrize("case", PROBE_CASES)
def test_malformed_output_selection_probes_are_refused(make_node: NodeFactory, probe: LabelledSet, case: str) -> None:
    images, labels, expected = _malformed_probes(probe)[case]
    node = make_node(select=False)
    reason = refused(node, select_request(probe, probe_images=images, probe_labels=labels))
    assert "OutputSelectRequest.probe_images: " in reason and expected in reason
    assert node.method is None and node.distiller is None
    # The refusal spent nothing: the round's well-formed request is still answered.
    assert isinstance(node.handle(select_request(probe))[0], msg.SelectReply)


@pytest.mark.parametrize("case", ["no-images", "bigger-records", "nan-pixel", "too-many"])
def test_malformed_grad_cam_probes_are_refused(
    make_node: NodeFactory, probe: LabelledSet, student_maps: np.ndarray, case: str
) -> None:
    images, _, expected = _malformed_probes(probe)[case]
    maps = np.ones((len(images), 8, 8), np.float32)  # the right count for these images
    node = make_node(select=False)
    reason = refused(node, msg.SelectRequest(round=1, probe_images=images, student_maps=maps, student=CNN))
    assert "SelectRequest.probe_images: " in reason and expected in reason
    assert node.method is None


def _huge_maps(count: int, side: int) -> np.ndarray:
    return np.broadcast_to(np.float32(0.5), (count, side, side))  # the claimed shape, no memory behind it


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("one-map-short", "expected 50 square maps of side 1 to 256, got [49, 8, 8]"),
        ("one-map-too-many", "expected 50 square maps of side 1 to 256, got [51, 8, 8]"),
        ("not-square", "got [50, 8, 9]"),
        ("two-dimensional", "got [50, 64]"),
        ("side-257", "got [50, 257, 257]"),
        ("huge-side", "got [50, 1000000, 1000000]"),
        ("empty-side", "got [50, 0, 0]"),
        ("nan", "expected finite float maps, got float32 with NaN or infinite values"),
        ("integers", "expected finite float maps, got int64"),
    ],
)
def test_malformed_student_maps_are_refused(
    make_node: NodeFactory, probe: LabelledSet, student_maps: np.ndarray, case: str, expected: str
) -> None:
    n = len(probe)
    maps = {
        "one-map-short": student_maps[:-1],
        "one-map-too-many": np.concatenate([student_maps, student_maps[:1]]),
        "not-square": np.ones((n, 8, 9), np.float32),
        "two-dimensional": student_maps.reshape(n, -1),
        "side-257": np.ones((n, MAX_MAP_SIDE + 1, MAX_MAP_SIDE + 1), np.float32),
        "huge-side": _huge_maps(n, 1_000_000),
        "empty-side": np.ones((n, 0, 0), np.float32),
        "nan": np.where(np.arange(n)[:, None, None] == 7, np.nan, student_maps).astype(np.float32),
        "integers": np.ones((n, 8, 8), np.int64),
    }[case]
    node = make_node(select=False)
    reason = refused(node, _grad_cam_request(probe, maps, 1))
    assert "SelectRequest.student_maps: " in reason and expected in reason
    assert node.method is None
    # The refusal spent nothing: the round's well-formed Grad-CAM request is still answered, and fixes `fedsa`.
    reply, _ = node.handle(_grad_cam_request(probe, student_maps, 1))
    assert isinstance(reply, msg.SelectReply) and np.isfinite(reply.transferability) and node.method == "fedsa"


@pytest.mark.parametrize(
    "case", ["labels-one-short", "label-above-num-classes", "negative-label", "num-classes-zero", "fractional-labels",
             "one-record", "one-class"],
)
def test_malformed_probe_labels_are_refused(make_node: NodeFactory, probe: LabelledSet, case: str) -> None:
    y, n = probe.y, len(probe)
    changes = {
        "labels-one-short": {"probe_labels": y[:-1]},
        "label-above-num-classes": {"probe_labels": np.where(np.arange(n) == 0, probe.num_classes + 5, y)},
        "negative-label": {"probe_labels": np.where(np.arange(n) == 0, -1, y)},
        "num-classes-zero": {"num_classes": 0},
        "fractional-labels": {"probe_labels": y.astype(np.float32) + 0.5},
        "one-record": {"probe_images": probe.x[:1], "probe_labels": y[:1]},  # check_records lets 1 record through
        "one-class": {"probe_labels": np.zeros_like(y)},
    }[case]
    node = make_node(select=False)
    reason = refused(node, select_request(probe, **changes))
    assert "OutputSelectRequest." in reason
    assert node.method is None
    assert isinstance(node.handle(select_request(probe))[0], msg.SelectReply)


# ----------------------------------------------------------------------------------------------
# 6. Nodes sent different models cannot complete a round together
# ----------------------------------------------------------------------------------------------


class Relay:
    """The aggregator's side of `Node.handle`: every message any node sent is kept."""

    def __init__(self, nodes: dict[str, Node]) -> None:
        self.nodes = nodes
        self.sent: list[msg.ClientMessage] = []

    def ask(self, name: str, request: msg.ServerMessage) -> list[msg.ClientMessage]:
        replies = self.nodes[name].handle(request)
        self.sent += replies
        return replies


def secure_round(
    relay: Relay, server: SecAggServer, requests: dict[str, msg.TrainRequest]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An honest in-memory round in `_secure_round`'s order; the unmasked sum and each node's update before masking."""
    updates = {}
    for name, request in requests.items():
        server.receive_advertise(only(relay.ask(name, request), sa.AdvertiseKeys))
        updates[name] = relay.nodes[name]._update.copy()
    roster = server.roster()
    for name in sorted(a.sender for a in roster.advertisements):
        server.receive_shares(only(relay.ask(name, roster), sa.ShareKeys))
    for name, delivery in server.deliveries().items():
        server.receive_masked(only(relay.ask(name, delivery), sa.MaskedInput))
    check = server.consistency_request()
    for name in check.survivors:
        server.receive_consistency(only(relay.ask(name, check), sa.ConsistencyCheckResponse))
    request = server.unmask_request()
    for name, _ in request.signatures:
        response, status = relay.ask(name, request)
        assert isinstance(status, msg.PrivacyStatus)
        server.receive_unmask(response)
    return server.finish(), updates


@pytest.fixture
def trio(make_node: NodeFactory) -> dict[str, Node]:
    return {name: make_node(name) for name in TRIO}


@pytest.mark.parametrize("relayed", ["every-advertisement", "only-agreeing-advertisements"])
def test_nodes_sent_different_models_cannot_complete_a_round(fed: Federation, trio: dict[str, Node], relayed: str) -> None:
    relay = Relay(trio)
    other = student_state(1)  # node-3 is sent another model, and a config that binds it
    nonce = random_bytes(32)
    config, config_3 = round_config(bound(STATE), nonce=nonce), round_config(bound(other), nonce=nonce)
    assert config_3 != config and dataclasses.replace(config_3, context=config.context) == config
    requests = {"node-1": train_request(STATE, config), "node-2": train_request(STATE, config),
                "node-3": train_request(other, config_3)}
    ads = {name: only(relay.ask(name, request), sa.AdvertiseKeys) for name, request in requests.items()}

    # An honest aggregator's server checks node-3's signature against its own config, drops it, and has too few.
    server = SecAggServer(config, fed.anchor)
    for name in ("node-1", "node-2"):
        server.receive_advertise(ads[name])
    with pytest.raises(IntegrityError, match="'node-3' signed its keys for another round configuration"):
        server.receive_advertise(ads["node-3"])
    with pytest.raises(AbortRound, match="only 2 nodes advertised keys; threshold is 3"):
        server.roster()

    # A malicious one relays rosters itself; every node refuses before sharing a key.
    everyone = sa.Roster(tuple(ads[name] for name in TRIO))
    rosters = {name: everyone for name in TRIO}
    if relayed == "only-agreeing-advertisements":
        rosters["node-1"] = rosters["node-2"] = sa.Roster((ads["node-1"], ads["node-2"]))
    for name in TRIO:
        reason = only(relay.ask(name, rosters[name]), msg.Abort).reason
        if rosters[name] is everyone:
            peer = "node-1" if name == "node-3" else "node-3"
            assert f"signature by {peer!r} does not verify" in reason
            assert f"{peer!r} signed its keys for another round configuration (another model" in reason
        else:
            assert "roster has 2 nodes; threshold is 3" in reason
    # Nor can it push them on to masking: they left the round.
    for name in TRIO:
        assert "outside a round this node joined" in only(relay.ask(name, sa.ShareDelivery(())), msg.Abort).reason
    assert not any(isinstance(m, (sa.ShareKeys, sa.MaskedInput)) for m in relay.sent)

    # Control: the same three nodes sent the same model and config complete the next round.
    relay.sent.clear()
    config = round_config(bound(STATE), number=2)
    total, updates = secure_round(relay, SecAggServer(config, fed.anchor), {n: train_request(STATE, config, 2) for n in TRIO})
    assert not any(isinstance(m, msg.Abort) for m in relay.sent)
    assert sum(isinstance(m, sa.MaskedInput) for m in relay.sent) == 3
    mean = np.mean([updates[n].astype(np.float64) for n in TRIO], axis=0)
    assert total.shape == (LENGTH,) and np.abs(mean).max() > 100 * quantization_step(SPEC)  # a real update
    assert np.abs(total / 3 - mean).max() <= quantization_step(SPEC)
    for node in trio.values():
        assert [e["round"] for e in node.state.entries("distillation")] == [1, 2]


def test_the_aggregator_cannot_pose_as_the_third_participant(fed: Federation, make_node: NodeFactory) -> None:
    nodes = {name: make_node(name) for name in ("node-1", "node-2")}
    relay = Relay(nodes)
    config = round_config(participants=("aggregator", "node-1", "node-2"))
    cert, key = fed.certs["aggregator"]
    sybil = SecAggClient("aggregator", config, Credentials.from_pem(fed.ca_cert.read_bytes(), cert.read_bytes(), key.read_bytes()))
    server = SecAggServer(config)  # a malicious aggregator relays its own keys unchecked

    def round_completes() -> np.ndarray | None:
        """The unmasked sum if both nodes go all the way; None as soon as one refuses."""
        updates = []
        for name, node in nodes.items():
            ad = relay.ask(name, train_request(config=config))[0]
            if isinstance(ad, msg.Abort):
                return None
            server.receive_advertise(ad)
            updates.append(node._update.astype(np.float64))
        server.receive_advertise(sybil.advertise())
        roster = server.roster()
        for name in nodes:
            (shares,) = relay.ask(name, roster)
            if isinstance(shares, msg.Abort):
                return None
            server.receive_shares(shares)
        server.receive_shares(sybil.share_keys(roster))
        for name, delivery in server.deliveries().items():
            if name == "aggregator":
                server.receive_masked(sybil.masked_input(delivery, np.zeros(LENGTH, np.float32)))
                continue
            (masked,) = relay.ask(name, delivery)
            if isinstance(masked, msg.Abort):
                return None
            server.receive_masked(masked)
        check = server.consistency_request()
        for name in check.survivors:
            server.receive_consistency(sybil.consistency_check(check) if name == "aggregator" else relay.ask(name, check)[0])
        request = server.unmask_request()
        for name, _ in request.signatures:
            server.receive_unmask(sybil.unmask(request) if name == "aggregator" else relay.ask(name, request)[0])
        return server.finish() - sum(updates)

    leaked = round_completes()
    assert leaked is None, (
        f"the aggregator unmasked node-1 + node-2 to within {np.abs(leaked).max():.2g} (one step is "
        f"{quantization_step(SPEC):.2g})"
    )
    assert not any(isinstance(m, sa.MaskedInput) for m in relay.sent)
    reasons = [m.reason for m in relay.sent if isinstance(m, msg.Abort)]
    assert reasons and all("'aggregator' is not a node's" in r for r in reasons), reasons  # the first refusal ends the round


# ----------------------------------------------------------------------------------------------
# Invalid round configs must be refused before training too
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"nonce": b"short"}, id="nonce-of-5-bytes"),
        pytest.param({"participants": ("node-1", "node-3", "node-2")}, id="unsorted-participants"),
        pytest.param({"participants": ("node-1", "node-1", "node-2")}, id="duplicate-participants"),
        pytest.param({"modulus_bits": 8}, id="modulus-too-small"),
        pytest.param({"quantization": sa.QuantizationSpec(float("nan"), 16)}, id="nan-clip"),
        pytest.param({"threshold": 4}, id="threshold-above-participants"),
        pytest.param({"vector_length": LENGTH + 1}, id="vector-length-of-another-model"),
    ],
)
def test_an_invalid_round_config_is_refused_before_training(make_node: NodeFactory, changes: dict[str, Any]) -> None:
    node = make_node()
    refused(node, train_request(config=round_config(**changes)))


# ----------------------------------------------------------------------------------------------
# 7. A spent budget is declined, not trained
# ----------------------------------------------------------------------------------------------


def test_a_node_whose_budget_is_spent_declines(fed: Federation, make_node: NodeFactory, probe: LabelledSet) -> None:
    node = make_node()  # calibrated for planned_rounds=2 after its teacher
    for number in (1, 2):
        only(node.handle(train_request(number=number)), sa.AdvertiseKeys)
    spent = Snapshot.of(node)
    assert [e["kind"] for e in node.state.entries()] == ["teacher", "distillation", "distillation"]
    assert node.state.epsilon() <= TARGET_EPSILON

    decline = only(node.handle(train_request(number=3)), msg.Decline)
    assert decline.round == 3
    assert decline.reason.startswith("node-1 declines round 3: one more round would spend epsilon ")
    assert f"> budget {TARGET_EPSILON}" in decline.reason
    assert float(decline.reason.split("epsilon ")[1].split(" >")[0]) > TARGET_EPSILON
    assert Snapshot.of(node) == spent

    reply, status = node.handle(select_request(probe, 4))
    assert isinstance(reply, msg.SelectReply)
    assert (status.fits_next_round, status.rounds_trained, status.ledger_entries) == (False, 2, 3)

    # The ledger, not the process, holds the budget: restarted on the same state, the node still declines.
    assert node.state is not None
    restarted = Node.from_config(node_config(fed, "node-1", node.state.directory.parent), mechanism_seed=0)
    assert isinstance(restarted.handle(select_request(probe, 5))[0], msg.SelectReply)
    only(restarted.handle(train_request(number=5)), msg.Decline)
    assert Snapshot.of(restarted) == Snapshot.of(node) == spent


def test_a_node_whose_name_is_not_its_certificate_s_does_not_start(fed: Federation, tmp_path: Path) -> None:
    from fedsa_secure.errors import ConfigError

    config = node_config(fed, "node-1", tmp_path / "state")
    impostor = dataclasses.replace(config, node=dataclasses.replace(config.node, name="node-2"))
    with pytest.raises(ConfigError, match=r"node.name is 'node-2' but this node's certificate .* is issued to 'node-1'"):
        Node.from_config(impostor)
    assert not (tmp_path / "state").exists()  # refused before any state was opened or teacher trained
