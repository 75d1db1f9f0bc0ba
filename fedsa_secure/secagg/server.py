"""The aggregator side of a secure-aggregation round, as an explicit stage machine.

Each stage collects messages (receive_*) and is closed by one call that produces the next
broadcast. A bad message is rejected with ProtocolError and leaves the round untouched; a
round that cannot finish safely (fewer than t nodes) aborts with AbortRound for good.
Masked inputs are added into a running uint32 sum as they arrive, so memory stays O(m).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from fedsa_secure.crypto import add_keystreams, public_from_private
from fedsa_secure.errors import AbortRound, IntegrityError, ProtocolError
from fedsa_secure.secagg import shamir
from fedsa_secure.secagg.graph import neighbours
from fedsa_secure.secagg.masks import SignedSeed, self_mask_seed, signed_pairwise_seeds
from fedsa_secure.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    Roster,
    RoundConfig,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedsa_secure.secagg.packing import unpack
from fedsa_secure.secagg.quantize import dequantize_sum
from fedsa_secure.secagg.ring import RING_DTYPE, modulus_mask
from fedsa_secure.secagg.sealing import SEALED_SIZE
from fedsa_secure.secagg.session import session_id, validate_config, x_coordinate
from fedsa_secure.secagg.stages import Stage, StageGuard
from fedsa_secure.secagg.validation import check_advertisement


class SecAggServer:
    """The aggregator's state for one round; learns only the sum of the survivors' vectors."""

    def __init__(self, config: RoundConfig) -> None:
        validate_config(config)
        self.config = config
        self._guard = StageGuard(f"secagg server round {config.round}")
        self._advertisements: dict[str, AdvertiseKeys] = {}
        self._session = b""
        self._graph: dict[str, frozenset[str]] = {}
        self._share_keys: dict[str, ShareKeys] = {}
        self._u2: tuple[str, ...] = ()
        self._running_sum = np.zeros(config.vector_length, dtype=RING_DTYPE)
        self._masked_from: set[str] = set()
        self._request: UnmaskRequest | None = None
        self._responses: dict[str, UnmaskResponse] = {}
        self._sum_quantized: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"SecAggServer(round={self.config.round}, stage={self.stage.value})"

    @property
    def stage(self) -> Stage:
        """The stage whose messages the server accepts now (or DONE / ABORTED)."""
        return self._guard.current

    @property
    def survivors(self) -> tuple[str, ...]:
        """Nodes whose vectors are in the sum (U3); known once unmask_request() has run."""
        if self._request is None:
            raise ProtocolError("survivors are not known before unmask_request()")
        return self._request.survivors

    @property
    def sum_quantized(self) -> np.ndarray:
        """The unmasked sum of the survivors' quantized vectors (uint32); after finish()."""
        if self._sum_quantized is None:
            raise ProtocolError("the quantized sum is not known before finish()")
        return self._sum_quantized

    @contextmanager
    def _closing(self, stage: Stage) -> Iterator[None]:
        """Close `stage`: advance on success, abort the round for good on failure."""
        self._guard.expect(stage)
        try:
            yield
        except BaseException:
            self._guard.abort()
            raise
        self._guard.advance()

    # Stage 0: AdvertiseKeys
    def receive_advertise(self, msg: AdvertiseKeys) -> None:
        """Record a node's public keys."""
        self._guard.expect(Stage.ADVERTISE_KEYS)
        check_advertisement(self.config, msg)
        if msg.sender in self._advertisements:
            raise ProtocolError(f"{msg.sender!r} already advertised keys this round")
        self._advertisements[msg.sender] = msg

    def roster(self) -> Roster:
        """Close stage 0: every advertisement, sorted by sender; AbortRound below t nodes."""
        with self._closing(Stage.ADVERTISE_KEYS):
            self._require(len(self._advertisements), "advertised keys")
            ads = tuple(self._advertisements[name] for name in sorted(self._advertisements))
            self._session = session_id(self.config, ads)
            self._graph = neighbours(self.config, self._session)
        return Roster(ads)

    # Stage 1: ShareKeys
    def receive_shares(self, msg: ShareKeys) -> None:
        """Record a node's sealed shares: exactly one bundle for every other roster member."""
        self._guard.expect(Stage.SHARE_KEYS)
        if msg.sender not in self._advertisements:
            raise ProtocolError(f"{msg.sender!r} is not in this round's roster")
        if msg.sender in self._share_keys:
            raise ProtocolError(f"{msg.sender!r} already sent its shares this round")
        recipients = [share.recipient for share in msg.shares]
        expected = sorted(self._graph[msg.sender] & set(self._advertisements))
        if sorted(recipients) != expected:
            raise ProtocolError(f"{msg.sender!r} must send exactly one share bundle to each neighbour in the roster")
        for share in msg.shares:
            if share.sender != msg.sender:
                raise ProtocolError(f"{msg.sender!r} sent a share bundle labelled as from {share.sender!r}")
            if len(share.ciphertext) != SEALED_SIZE:
                raise ProtocolError(
                    f"share bundle from {msg.sender!r} has {len(share.ciphertext)} bytes, expected {SEALED_SIZE}"
                )
        self._share_keys[msg.sender] = msg

    def deliveries(self) -> dict[str, ShareDelivery]:
        """Close stage 1: for each node in U2, the bundles addressed to it by the others in U2."""
        with self._closing(Stage.SHARE_KEYS):
            self._require(len(self._share_keys), "shared keys")
            self._u2 = tuple(sorted(self._share_keys))
            inbox: dict[str, list[EncryptedShare]] = {name: [] for name in self._u2}
            for sender in self._u2:
                for share in self._share_keys[sender].shares:
                    if share.recipient in inbox:
                        inbox[share.recipient].append(share)
        return {name: ShareDelivery(tuple(shares)) for name, shares in inbox.items()}

    # Stage 2: MaskedInput
    def receive_masked(self, msg: MaskedInput) -> None:
        """Add a node's masked vector into the running sum (mod 2**32; reduced at the end)."""
        self._guard.expect(Stage.MASKED_INPUT)
        if msg.sender not in self._u2:
            raise ProtocolError(f"{msg.sender!r} did not share keys, so its masked input cannot be unmasked")
        if msg.sender in self._masked_from:
            raise ProtocolError(f"{msg.sender!r} already sent its masked input this round")
        self._running_sum += unpack(msg.packed, self.config.modulus_bits, self.config.vector_length)
        self._masked_from.add(msg.sender)

    def unmask_request(self) -> UnmaskRequest:
        """Close stage 2: survivors U3 sent masked input; dropped = U2 minus U3."""
        with self._closing(Stage.MASKED_INPUT):
            self._require(len(self._masked_from), "sent masked input")
            self._request = UnmaskRequest(
                survivors=tuple(sorted(self._masked_from)),
                dropped=tuple(name for name in self._u2 if name not in self._masked_from),
            )
        return self._request

    # Stage 4: Unmask
    def receive_unmask(self, msg: UnmaskResponse) -> None:
        """Record a survivor's shares: b-shares for exactly the survivors, s_sk-shares for exactly the dropped."""
        self._guard.expect(Stage.UNMASK)
        request = self._unmask_request_sent()
        if msg.sender not in request.survivors:
            raise ProtocolError(f"{msg.sender!r} is not a survivor of this round")
        if msg.sender in self._responses:
            raise ProtocolError(f"{msg.sender!r} already answered the unmask request")
        neighbourhood = self._graph[msg.sender] | {msg.sender}
        if sorted(owner for owner, _ in msg.self_mask_shares) != sorted(neighbourhood & set(request.survivors)):
            raise ProtocolError(f"{msg.sender!r} must send one self-mask share per survivor in its neighbourhood")
        if sorted(owner for owner, _ in msg.mask_key_shares) != sorted(neighbourhood & set(request.dropped)):
            raise ProtocolError(f"{msg.sender!r} must send one mask-key share per dropped neighbour")
        shares = msg.self_mask_shares + msg.mask_key_shares
        if any(len(share) != shamir.SHARE_SIZE for _, share in shares):
            raise ProtocolError(f"{msg.sender!r} sent a share that is not {shamir.SHARE_SIZE} bytes")
        self._responses[msg.sender] = msg

    def finish(self) -> np.ndarray:
        """Close the round: remove self masks and dropped nodes' pairwise masks; the float64 sum."""
        with self._closing(Stage.UNMASK):
            self._require(len(self._responses), "answered the unmask request")
            request = self._unmask_request_sent()
            seeds: list[SignedSeed] = []
            for owner in request.survivors:
                seed = self._reconstruct(owner, lambda response: response.self_mask_shares)
                seeds.append((self_mask_seed(seed, self._session), True))
            for owner in request.dropped:
                survivor_keys = {
                    k: self._advertisements[k].mask_public_key for k in self._graph[owner] & set(request.survivors)
                }
                mask_private = self._reconstruct(owner, lambda response: response.mask_key_shares)
                if public_from_private(mask_private) != self._advertisements[owner].mask_public_key:
                    raise IntegrityError(f"reconstructed mask key of {owner!r} does not match its advertised key")
                # Survivor k added sign_k(d)*PRG(s_kd) = -sign_d(k)*PRG(s_dk): adding d's signed sum cancels it.
                seeds += signed_pairwise_seeds(owner, mask_private, survivor_keys, self._session)
            total = self._running_sum.copy()
            add_keystreams(total, seeds)
            total &= modulus_mask(self.config.modulus_bits)
            self._sum_quantized = total
            result = dequantize_sum(total, self.config.quantization, len(request.survivors))
        return result

    def _unmask_request_sent(self) -> UnmaskRequest:
        if self._request is None:
            raise ProtocolError("no unmask request has been sent this round")
        return self._request

    def _reconstruct(self, owner: str, pick: Callable[[UnmaskResponse], tuple[tuple[str, bytes], ...]]) -> bytes:
        """Combine the responders' shares of `owner`'s secret (pick chooses b- or s_sk-shares)."""
        holders = sorted((self._graph[owner] | {owner}) & set(self._responses))
        if len(holders) < self.config.threshold:
            raise AbortRound(
                f"round {self.config.round} aborted: only {len(holders)} of {owner!r}'s neighbourhood answered "
                f"the unmask request; threshold is {self.config.threshold}"
            )
        points = [(x_coordinate(self.config, h), dict(pick(self._responses[h]))[owner]) for h in holders]
        return shamir.combine(points, self.config.threshold)

    def _require(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            raise AbortRound(
                f"round {self.config.round} aborted: only {count} nodes {what}; threshold is {self.config.threshold}"
            )
