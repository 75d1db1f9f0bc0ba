"""The aggregator side of a secure-aggregation round, as an explicit stage machine.

Each stage collects messages (receive_*) and is closed by one call that produces the next
broadcast. A bad message is rejected (ProtocolError, or IntegrityError for a bad signature)
and leaves the round untouched, so the caller drops just that sender; bad unmask shares are
found and their sender dropped in finish(). Only a round that cannot finish safely (fewer
than t nodes left) aborts, with AbortRound, for good.
Masked inputs are added into a running uint32 sum as they arrive, so memory stays O(m).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import numpy as np

from fedsa_secure.crypto import TrustAnchor, public_from_private
from fedsa_secure.errors import AbortRound, IntegrityError, ProtocolError
from fedsa_secure.secagg import shamir
from fedsa_secure.secagg.graph import neighbours
from fedsa_secure.secagg.identity import survivors_payload, verify_advertisement
from fedsa_secure.secagg.masks import SignedSeed, add_signed_keystreams, self_mask_seed, signed_pairwise_seeds
from fedsa_secure.secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheckRequest,
    ConsistencyCheckResponse,
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

    def __init__(self, config: RoundConfig, anchor: TrustAnchor | None = None) -> None:
        validate_config(config)
        self.config = config
        self._anchor = anchor  # the federation CA: with it, badly signed messages drop their sender
        self._guard = StageGuard(f"secagg server round {config.round}")
        self._advertisements: dict[str, AdvertiseKeys] = {}
        self._session = b""
        self._graph: dict[str, frozenset[str]] = {}
        self._share_keys: dict[str, ShareKeys] = {}
        self._u2: tuple[str, ...] = ()
        self._running_sum = np.zeros(config.vector_length, dtype=RING_DTYPE)
        self._masked_from: set[str] = set()
        self._consistency: ConsistencyCheckRequest | None = None
        self._signatures: dict[str, bytes] = {}
        self._request: UnmaskRequest | None = None
        self._responses: dict[str, tuple[dict[str, bytes], dict[str, bytes]]] = {}  # sender -> (b-, s_sk-shares by owner)
        self._rejected: dict[str, str] = {}
        self._sum_quantized: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"SecAggServer(round={self.config.round}, stage={self.stage.value})"

    @property
    def stage(self) -> Stage:
        """The stage whose messages the server accepts now (or DONE / ABORTED)."""
        return self._guard.current

    @property
    def survivors(self) -> tuple[str, ...]:
        """Nodes whose vectors are in the sum (U3); known once consistency_request() has run."""
        if self._consistency is None:
            raise ProtocolError("survivors are not known before consistency_request()")
        return self._consistency.survivors

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
        if self._anchor is not None:
            verify_advertisement(self._anchor, self.config, msg)
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

    def consistency_request(self) -> ConsistencyCheckRequest:
        """Close stage 2: the survivors U3 (who sent masked input) are asked to sign U3."""
        with self._closing(Stage.MASKED_INPUT):
            self._require(len(self._masked_from), "sent masked input")
            self._consistency = ConsistencyCheckRequest(tuple(sorted(self._masked_from)))
        return self._consistency

    # Stage 3: ConsistencyCheck
    def receive_consistency(self, msg: ConsistencyCheckResponse) -> None:
        """Record a survivor's signature over U3 (verified here when the server has the CA)."""
        self._guard.expect(Stage.CONSISTENCY_CHECK)
        survivors = self._consistency_sent().survivors
        if msg.sender not in survivors:
            raise ProtocolError(f"{msg.sender!r} is not a survivor of this round")
        if msg.sender in self._signatures:
            raise ProtocolError(f"{msg.sender!r} already signed the survivor set")
        if self._anchor is not None:
            self._anchor.verify(
                self._advertisements[msg.sender].certificate, msg.sender,
                survivors_payload(self._session, survivors), msg.signature,
            )
        self._signatures[msg.sender] = msg.signature

    def unmask_request(self) -> UnmaskRequest:
        """Close stage 3: U3, dropped = U2 minus U3, and every signature; goes to the signers."""
        with self._closing(Stage.CONSISTENCY_CHECK):
            self._require(len(self._signatures), "signed the survivor set")
            survivors = self._consistency_sent().survivors
            self._request = UnmaskRequest(
                survivors=survivors,
                dropped=tuple(name for name in self._u2 if name not in self._masked_from),
                signatures=tuple(sorted(self._signatures.items())),
            )
        return self._request

    # Stage 4: Unmask
    def receive_unmask(self, msg: UnmaskResponse) -> None:
        """Record a signer's shares: b-shares for exactly the survivors, s_sk-shares for exactly the dropped."""
        self._guard.expect(Stage.UNMASK)
        request = self._unmask_request_sent()
        if msg.sender not in self._signatures:
            raise ProtocolError(f"{msg.sender!r} did not sign the survivor set of this round")
        if msg.sender in self._responses:
            raise ProtocolError(f"{msg.sender!r} already answered the unmask request")
        neighbourhood = self._graph[msg.sender] | {msg.sender}
        if sorted(owner for owner, _ in msg.self_mask_shares) != sorted(neighbourhood & set(request.survivors)):
            raise ProtocolError(f"{msg.sender!r} must send one self-mask share per survivor in its neighbourhood")
        if sorted(owner for owner, _ in msg.mask_key_shares) != sorted(neighbourhood & set(request.dropped)):
            raise ProtocolError(f"{msg.sender!r} must send one mask-key share per dropped neighbour")
        if any(not shamir.is_share(share) for _, share in msg.self_mask_shares + msg.mask_key_shares):
            raise ProtocolError(f"{msg.sender!r} sent a share that is not a {shamir.SHARE_SIZE}-byte field element")
        self._responses[msg.sender] = (dict(msg.self_mask_shares), dict(msg.mask_key_shares))

    @property
    def rejected(self) -> dict[str, str]:
        """Responders whose unmask shares finish() found inconsistent, with the reason; left out of the sum's unmasking."""
        return dict(self._rejected)

    def finish(self) -> np.ndarray:
        """Close the round: remove self masks and dropped nodes' pairwise masks; the float64 sum.

        A responder whose shares are inconsistent with the others' is dropped and unmasking is
        retried without it, so one bad response cannot abort the round for the honest nodes.
        """
        with self._closing(Stage.UNMASK):
            self._require(len(self._responses), "answered the unmask request")
            request = self._unmask_request_sent()
            while True:
                try:
                    seeds = self._unmasking_seeds(request)
                    break
                except _BadResponder as bad:
                    self._rejected[bad.name] = bad.reason
                    del self._responses[bad.name]
            total = self._running_sum.copy()
            add_signed_keystreams(total, seeds)
            total &= modulus_mask(self.config.modulus_bits)
            self._sum_quantized = total
            result = dequantize_sum(total, self.config.quantization, len(request.survivors))
        return result

    def _unmasking_seeds(self, request: UnmaskRequest) -> list[SignedSeed]:
        seeds: list[SignedSeed] = []
        checks: dict[tuple[int, ...], tuple[int, ...]] = {}  # one random parity check per holder set
        for owner in request.survivors:
            seed = self._recover(owner, True, checks, _any_secret)
            seeds.append((self_mask_seed(seed, self._session), True))
        for owner in request.dropped:
            advertised = self._advertisements[owner].mask_public_key
            mask_private = self._recover(owner, False, checks, partial(_is_private_of, advertised))
            survivor_keys = {
                k: self._advertisements[k].mask_public_key for k in self._graph[owner] & set(request.survivors)
            }
            # Survivor k added sign_k(d)*PRG(s_kd) = -sign_d(k)*PRG(s_dk): adding d's signed sum cancels it.
            seeds += signed_pairwise_seeds(owner, mask_private, survivor_keys, self._session)
        return seeds

    def _recover(
        self,
        owner: str,
        self_mask: bool,
        checks: dict[tuple[int, ...], tuple[int, ...]],
        valid: Callable[[bytes], bool],
    ) -> bytes:
        """Reconstruct `owner`'s b (self_mask) or s_sk from the responders' shares.

        All shares must lie on one polynomial and the secret must pass `valid`; otherwise the
        one responder whose removal repairs both is reported (_BadResponder). Identifying it
        needs redundancy: at least t+2 holders, or t+1 when `valid` checks the secret (s_sk
        against its advertised public key); otherwise the round aborts rather than guess.
        """
        holders = sorted((self._graph[owner] | {owner}) & set(self._responses))
        if len(holders) < self.config.threshold:
            raise AbortRound(
                f"round {self.config.round} aborted: only {len(holders)} of {owner!r}'s neighbourhood answered "
                f"the unmask request with consistent shares; threshold is {self.config.threshold}"
            )
        points = [(x_coordinate(self.config, h), self._share(h, owner, self_mask)) for h in holders]
        secret = self._combine_checked(points, checks, valid)
        if secret is not None:
            return secret
        suspects = [
            suspect
            for index, suspect in enumerate(holders)
            if self._combine_checked(points[:index] + points[index + 1 :], checks, valid) is not None
        ]
        if len(suspects) == 1:  # several would mean too little redundancy to tell who lied
            kind = "self-mask" if self_mask else "mask-key"
            raise _BadResponder(suspects[0], f"its {kind} share of {owner!r} is inconsistent with the others'")
        raise AbortRound(
            f"round {self.config.round} aborted: the shares of {owner!r} are inconsistent and no single "
            f"responder can be identified as the cause"
        )

    def _combine_checked(
        self, points: list[tuple[int, bytes]], checks: dict[tuple[int, ...], tuple[int, ...]],
        valid: Callable[[bytes], bool],
    ) -> bytes | None:
        if len(points) < self.config.threshold:
            return None
        xs = tuple(x for x, _ in points)
        if xs not in checks:
            checks[xs] = shamir.parity_check(xs, self.config.threshold)
        if not shamir.passes(checks[xs], [share for _, share in points]):
            return None
        try:
            secret = shamir.combine(points, self.config.threshold)
        except IntegrityError:
            return None
        return secret if valid(secret) else None

    def _share(self, holder: str, owner: str, self_mask: bool) -> bytes:
        self_mask_shares, mask_key_shares = self._responses[holder]
        return (self_mask_shares if self_mask else mask_key_shares)[owner]

    def _consistency_sent(self) -> ConsistencyCheckRequest:
        if self._consistency is None:
            raise ProtocolError("no consistency check has been sent this round")
        return self._consistency

    def _unmask_request_sent(self) -> UnmaskRequest:
        if self._request is None:
            raise ProtocolError("no unmask request has been sent this round")
        return self._request

    def _require(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            raise AbortRound(
                f"round {self.config.round} aborted: only {count} nodes {what}; threshold is {self.config.threshold}"
            )


def _any_secret(_: bytes) -> bool:
    """A self-mask seed has no public counterpart to check a recovered secret against."""
    return True


def _is_private_of(public_key: bytes, private_key: bytes) -> bool:
    """Whether a recovered mask key is the one whose public half the dropped node advertised."""
    return public_from_private(private_key) == public_key


class _BadResponder(Exception):
    """finish(): one responder's shares are to blame; it is dropped and unmasking retried."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name, self.reason = name, reason
