"""Plain dataclasses for the learning side of a round; transport maps them to protobuf.

Arrays are numpy; transport encodes them as dtype + shape + raw little-endian bytes (never pickle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsa_secure.secagg import messages as sa


@dataclass(frozen=True)
class StudentArchitecture:
    """The student the nodes build from their own code, by name: the digest of what it builds shows both sides built the
    same network (models.architecture_digest), and each round's session binds it."""

    name: str  # a built-in architecture or the `module:function` both configs name
    num_classes: int  # of its head
    digest: bytes  # SHA-256


@dataclass(frozen=True)
class SelectRequest:
    """Aggregator -> node: probe images and the student's Grad-CAM maps on them."""

    round: int
    probe_images: np.ndarray  # float32 [N, C, H, W]
    student_maps: np.ndarray  # float32 [N, h, w]
    student: StudentArchitecture


@dataclass(frozen=True)
class OutputSelectRequest:
    """Aggregator -> node (`fedsa+`): the labelled probe set, to score the teacher's outputs and map them to its labels.

    The probe set is the aggregator's own data. The node returns one LogME scalar (a SelectReply)
    and keeps the output map it fits on these labels; neither the map nor the teacher leaves it.
    """

    round: int
    probe_images: np.ndarray  # float32 [N, ...]: records of the nodes' shape
    probe_labels: np.ndarray  # int64 [N], in range(num_classes)
    num_classes: int  # the student's target labels
    student: StudentArchitecture


@dataclass(frozen=True)
class SelectReply:
    """Node -> aggregator: one scalar transferability score (Grad-CAM or LogME); nothing else about the teacher leaves."""

    round: int
    transferability: float


@dataclass(frozen=True)
class TrainRequest:
    """Aggregator -> cohort node: current student parameters it trains and the secure-aggregation round it joins.

    Every participant adds its update unweighted and the aggregator divides the sum by the
    survivors, so no weight is sent that could single one node out. `secagg.context` must be the
    digest of `student_state` (models.state_digest): the node checks it, and the session id binds
    it, so nodes that were sent different models cannot complete a round together.
    """

    round: int
    student_state: dict[str, np.ndarray]  # float32; the backbone (`fedsa`), or backbone and head (`fedsa+`)
    secagg: sa.RoundConfig


@dataclass(frozen=True)
class Decline:
    """Node -> aggregator: the node will not train this round because its privacy budget would not allow it."""

    round: int
    reason: str


@dataclass(frozen=True)
class Abort:
    """Node -> aggregator: the node leaves this round (or refuses a request) for the reason given.

    Sent instead of an answer whenever the node refuses what it was asked (a cohort or threshold
    below its own minimum, a model that does not match the session, a second selection request
    in a round, a malformed input) or cannot complete a stage; the aggregator logs the reason
    and stops waiting for this node in this round.
    """

    round: int
    reason: str


@dataclass(frozen=True)
class PrivacyStatus:
    """Node -> aggregator after a selection or a round: its ledger's figures, for progress and the summary."""

    round: int
    epsilon: float
    delta: float
    target_epsilon: float
    rounds_trained: int
    fits_next_round: bool  # the node's own budget check for one more round; it declines otherwise
    ledger_entries: int  # with ledger_head: a witness the audit checks the node's ledger against
    ledger_head: str


@dataclass(frozen=True)
class Join:
    """Node -> aggregator, once per process start: it is (again) ready, with the privacy status its ledger gives.

    A node that restarted has forgotten its selection state; the aggregator asks it to select again.
    """

    status: PrivacyStatus


@dataclass(frozen=True)
class Shutdown:
    """Aggregator -> node: the run is over."""

    reason: str


@dataclass(frozen=True)
class Wait:
    """Aggregator -> node: nothing to do yet; poll again."""


ServerMessage = (
    SelectRequest | OutputSelectRequest | TrainRequest | sa.Roster | sa.ShareDelivery | sa.ConsistencyCheckRequest | sa.UnmaskRequest
    | Shutdown | Wait
)
ClientMessage = (
    SelectReply | Decline | Abort | Join | PrivacyStatus | sa.AdvertiseKeys | sa.ShareKeys | sa.MaskedInput
    | sa.ConsistencyCheckResponse | sa.UnmaskResponse
)
