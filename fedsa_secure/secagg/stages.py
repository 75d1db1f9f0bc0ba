"""The protocol stages and a small guard that enforces their order."""

from __future__ import annotations

from enum import Enum

from fedsa_secure.errors import ProtocolError


class Stage(Enum):
    """Stages of a round, in protocol order, then the two final states."""

    ADVERTISE_KEYS = "advertise-keys"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    CONSISTENCY_CHECK = "consistency-check"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


ROUND_ORDER = (
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
    Stage.DONE,
)


class StageGuard:
    """Tracks the current stage; refuses any step that is not the current one."""

    def __init__(self, role: str) -> None:
        self._role = role
        self.current = ROUND_ORDER[0]

    def expect(self, stage: Stage) -> None:
        """ProtocolError unless `stage` is the current stage."""
        if self.current is not stage:
            raise ProtocolError(
                f"{self._role}: {stage.value} is out of order; the round is at {self.current.value}"
            )

    def advance(self) -> None:
        """Move to the next stage in ROUND_ORDER."""
        self.current = ROUND_ORDER[ROUND_ORDER.index(self.current) + 1]

    def abort(self) -> None:
        """Enter ABORTED for good: every later step is refused."""
        self.current = Stage.ABORTED
