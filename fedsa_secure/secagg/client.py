"""The node side of a secure-aggregation round, as an explicit stage machine.

Fail-closed: any error inside a stage aborts the client for the rest of the round, so an
aggregator cannot probe it with variations of a request (e.g. re-ask unmasking with another
survivor list after a refusal).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from fedsa_secure.crypto import SYSTEM, Randomness, generate_keypair
from fedsa_secure.errors import AbortRound, ProtocolError
from fedsa_secure.secagg import shamir
from fedsa_secure.secagg.graph import neighbours
from fedsa_secure.secagg.identity import (
    Credentials,
    check_survivor_signatures,
    sign_advertisement,
    survivors_payload,
    verify_advertisement,
)
from fedsa_secure.secagg.masks import mask_and_pack, self_mask_seed, signed_pairwise_seeds
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
from fedsa_secure.secagg.sealing import open_with_key, seal_with_key, sealing_keys
from fedsa_secure.secagg.session import session_id, validate_config, x_coordinate
from fedsa_secure.secagg.stages import Stage, StageGuard
from fedsa_secure.secagg.validation import check_advertisement, check_name_list

SEED_SIZE = 32


class SecAggClient:
    """One node's view of one round: advertise -> share_keys -> masked_input -> consistency_check -> unmask.

    With `credentials` (always, in a federation) the node signs its keys and the survivor set
    and verifies every peer's signatures against the federation CA, so a malicious aggregator
    can neither substitute keys nor show nodes different survivor sets. Without, it trusts the
    aggregator to relay faithfully: only for in-memory tests and benchmarks.
    """

    def __init__(
        self, name: str, config: RoundConfig, credentials: Credentials | None = None, randomness: Randomness = SYSTEM
    ) -> None:
        validate_config(config)
        x_coordinate(config, name)  # refuses a name outside the cohort
        self.name = name
        self.config = config
        self._credentials = credentials
        self._anchor = credentials.anchor if credentials is not None else None
        self._random = randomness  # SYSTEM; a FixedRandomness only in known-answer tests
        self._guard = StageGuard(f"secagg client {name!r}")
        self._channel_private = b""
        self._mask_private = b""
        self._self_seed = b""
        self._advertisement: AdvertiseKeys | None = None
        self._roster: dict[str, AdvertiseKeys] = {}
        self._session = b""
        self._neighbours: frozenset[str] = frozenset()  # graph neighbours that advertised keys
        self._held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (b-share, s_sk-share) held by us
        self._sealing: dict[str, bytes] = {}  # neighbour -> AEAD key for share bundles, both directions
        self._u2: frozenset[str] = frozenset()
        self._u3: tuple[str, ...] | None = None  # the survivor set this node signed

    def __repr__(self) -> str:
        return f"SecAggClient(name={self.name!r}, round={self.config.round}, stage={self.stage.value})"

    @property
    def stage(self) -> Stage:
        """The step this client expects next (or DONE / ABORTED)."""
        return self._guard.current

    @property
    def u2(self) -> frozenset[str]:
        """Its neighbourhood's nodes (itself included) whose shares it holds: its view of U2."""
        return self._u2

    @contextmanager
    def _step(self, stage: Stage) -> Iterator[None]:
        self._guard.expect(stage)
        try:
            yield
        except BaseException:
            self._guard.abort()
            self._forget_secrets()  # an aborted round never resumes
            raise
        self._guard.advance()

    def advertise(self) -> AdvertiseKeys:
        """Stage 0: fresh channel and mask key pairs and a fresh self-mask seed b_i."""
        with self._step(Stage.ADVERTISE_KEYS):
            self._channel_private, channel_public = generate_keypair(self._random)
            self._mask_private, mask_public = generate_keypair(self._random)
            self._self_seed = self._random.bytes(SEED_SIZE)
            ad = AdvertiseKeys(self.name, channel_public, mask_public)
            if self._credentials is not None:
                ad = sign_advertisement(self._credentials, self.config, ad)
            self._advertisement = ad
        return ad

    def share_keys(self, roster: Roster) -> ShareKeys:
        """Stage 1: check the roster, fix the session id, Shamir-share b_i and s_sk_i, seal per peer."""
        with self._step(Stage.SHARE_KEYS):
            self._roster = self._check_roster(roster)
            self._session = session_id(self.config, roster.advertisements)
            self._neighbours = neighbours(self.config, self._session)[self.name] & frozenset(self._roster)
            members = sorted(self._neighbours | {self.name})
            if len(members) < self.config.threshold:
                raise AbortRound(
                    f"only {len(members)} nodes of {self.name!r}'s neighbourhood advertised keys; "
                    f"threshold is {self.config.threshold}"
                )
            xs = [x_coordinate(self.config, member) for member in members]
            b_shares = shamir.split(self._self_seed, self.config.threshold, xs, self._random)
            s_shares = shamir.split(self._mask_private, self.config.threshold, xs, self._random)
            publics = {peer: self._roster[peer].channel_public_key for peer in self._neighbours}
            self._sealing = sealing_keys(self._channel_private, publics, self._session, self.name)
            sealed = []
            for member, b_share, s_share in zip(members, b_shares, s_shares):
                if member == self.name:
                    self._held[member] = (b_share, s_share)
                    continue
                key = self._sealing[member]
                ciphertext = seal_with_key(key, self._session, self.name, member, (b_share, s_share), self._random)
                sealed.append(EncryptedShare(self.name, member, ciphertext))
        return ShareKeys(self.name, tuple(sealed))

    def masked_input(self, delivery: ShareDelivery, vector: np.ndarray) -> MaskedInput:
        """Stage 2: store peers' shares (defining U2), then quantize, mask and pack `vector`."""
        with self._step(Stage.MASKED_INPUT):
            values = np.asarray(vector)
            if values.dtype not in (np.float32, np.float64):  # float32 updates are quantized as they are, uncopied
                values = values.astype(np.float64)
            if values.shape != (self.config.vector_length,):
                raise ProtocolError(
                    f"vector must have shape ({self.config.vector_length},), got {values.shape}"
                )
            self._receive_delivery(delivery)
            if len(self._u2) < self.config.threshold:
                raise AbortRound(
                    f"only {len(self._u2)} nodes of {self.name!r}'s neighbourhood shared keys; "
                    f"threshold is {self.config.threshold}"
                )
            peers = {peer: self._roster[peer].mask_public_key for peer in self._u2}
            seeds = [(self_mask_seed(self._self_seed, self._session), False)]
            seeds += signed_pairwise_seeds(self.name, self._mask_private, peers, self._session)
            packed = mask_and_pack(values, self.config, seeds, self._random.word_reader())
            self._forget_keys()  # unmasking needs only the shares held
        return MaskedInput(self.name, packed)

    def consistency_check(self, request: ConsistencyCheckRequest) -> ConsistencyCheckResponse:
        """Stage 3: sign the survivor set (U3) if it is plausible; unmask later needs >= t such signatures."""
        with self._step(Stage.CONSISTENCY_CHECK):
            survivors = check_name_list(request.survivors, "survivors")
            strangers = survivors - frozenset(self._roster)
            if strangers:
                raise ProtocolError(f"consistency check refused: {sorted(strangers)} are not in this round's roster")
            if self.name not in survivors:
                raise ProtocolError(f"consistency check refused: {self.name!r} sent its input but is not a survivor")
            alive = len(survivors & self._u2)
            if alive < self.config.threshold:
                raise ProtocolError(
                    f"consistency check refused: {alive} survivors in {self.name!r}'s neighbourhood is below "
                    f"the threshold {self.config.threshold}"
                )
            self._u3 = tuple(sorted(survivors))
            signature = b""
            if self._credentials is not None:
                signature = self._credentials.signer.sign(survivors_payload(self._session, self._u3))
        return ConsistencyCheckResponse(self.name, signature)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Stage 4: reveal b-shares of survivors and s_sk-shares of dropped nodes, never both for one node."""
        with self._step(Stage.UNMASK):
            survivors = check_name_list(request.survivors, "survivors")
            dropped = check_name_list(request.dropped, "dropped")
            if tuple(sorted(survivors)) != self._u3:
                raise ProtocolError("unmask refused: the survivor set differs from the one this node signed")
            check_survivor_signatures(
                self._anchor, self._roster, self._session, request.survivors, request.signatures, self.config.threshold
            )
            if survivors & dropped:
                raise ProtocolError("unmask refused: a node is listed both as survivor and as dropped")
            strangers = (survivors | dropped) - frozenset(self.config.participants)
            if strangers:
                raise ProtocolError(f"unmask refused: {sorted(strangers)} are not participants of this round")
            if self.name not in survivors:
                raise ProtocolError(f"unmask refused: {self.name!r} sent its input but is not listed as a survivor")
            # Only the neighbourhood matters: we hold shares of exactly the nodes in U2 (and ours).
            alive, dead = survivors & self._u2, dropped & self._u2
            if len(alive) < self.config.threshold:
                raise ProtocolError(
                    f"unmask refused: {len(alive)} survivors in {self.name!r}'s neighbourhood is below "
                    f"the threshold {self.config.threshold}"
                )
            response = UnmaskResponse(
                sender=self.name,
                self_mask_shares=tuple((owner, self._held[owner][0]) for owner in sorted(alive)),
                mask_key_shares=tuple((owner, self._held[owner][1]) for owner in sorted(dead)),
            )
            self._forget_secrets()
        return response

    def _check_roster(self, roster: Roster) -> dict[str, AdvertiseKeys]:
        members: dict[str, AdvertiseKeys] = {}
        for ad in roster.advertisements:
            check_advertisement(self.config, ad)
            if self._anchor is not None:
                verify_advertisement(self._anchor, self.config, ad)
            if ad.sender in members:
                raise ProtocolError(f"roster lists {ad.sender!r} twice")
            members[ad.sender] = ad
        if members.get(self.name) != self._advertisement:
            raise ProtocolError(f"roster does not carry {self.name!r}'s own keys unchanged")
        if len(members) < self.config.threshold:
            raise ProtocolError(f"roster has {len(members)} nodes; threshold is {self.config.threshold}")
        return members

    def _receive_delivery(self, delivery: ShareDelivery) -> None:
        for share in delivery.shares:
            if share.recipient != self.name:
                raise ProtocolError(f"received a share bundle addressed to {share.recipient!r}")
            if share.sender not in self._neighbours:
                raise ProtocolError(f"received a share bundle from {share.sender!r}, who is not a neighbour in the roster")
            if share.sender in self._held:
                raise ProtocolError(f"received two share bundles from {share.sender!r}")
            key = self._sealing[share.sender]
            self._held[share.sender] = open_with_key(key, self._session, share.sender, self.name, share.ciphertext)
        self._u2 = frozenset(self._held)

    def _forget_keys(self) -> None:
        """Drop the key pairs, the self-mask seed and the sealing keys: nothing after masking needs them."""
        self._channel_private = self._mask_private = self._self_seed = b""
        self._sealing = {}

    def _forget_secrets(self) -> None:
        """Drop every reference to key material and shares once the round no longer needs them."""
        self._forget_keys()
        self._held = {}
