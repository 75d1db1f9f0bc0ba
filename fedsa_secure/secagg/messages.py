"""Plain dataclasses for the secure-aggregation stages; transport maps them to protobuf."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class QuantizationSpec:
    """Fixed-point encoding: clip to [-clip, clip], map onto integers 0..levels (levels = 2**level_bits)."""

    clip: float
    level_bits: int


@dataclass(frozen=True)
class RoundConfig:
    """Everything every participant must agree on; hashed into the session id."""

    round: int
    participants: tuple[str, ...]  # sorted node names of the cohort
    threshold: int  # t: minimum survivors to unmask
    vector_length: int  # m: number of coordinates
    quantization: QuantizationSpec
    modulus_bits: int  # b: arithmetic in Z_{2^b}; must satisfy n * 2**level_bits < 2**b
    nonce: bytes  # 32 random bytes chosen by the aggregator per round (anti-replay)
    degree: int = 0  # k: neighbours per node in the SecAgg+ graph; 0 means n-1 (classic SecAgg)
    context: bytes = b""  # digest of what every input starts from (the application's model); in the session id


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 0, node -> aggregator: two X25519 public keys (raw 32 bytes), optionally signed.

    With credentials, `signature` (ECDSA with the node's TLS key, see `secagg.identity`) and
    the node's CA-issued `certificate` (PEM) let every peer check the keys came from `sender`.
    """

    sender: str
    channel_public_key: bytes  # c_pk: for sealing Shamir shares to peers
    mask_public_key: bytes  # s_pk: for pairwise masks
    signature: bytes = b""
    certificate: bytes = b""


@dataclass(frozen=True)
class Roster:
    """Stage 0 -> 1, aggregator -> nodes: every advertisement received."""

    advertisements: tuple[AdvertiseKeys, ...]


@dataclass(frozen=True)
class EncryptedShare:
    """Stage 1: a sealed pair of Shamir shares (self-mask seed b_i, mask key s_sk_i) for one peer."""

    sender: str
    recipient: str
    ciphertext: bytes


@dataclass(frozen=True)
class ShareKeys:
    """Stage 1, node -> aggregator: one sealed share bundle per peer."""

    sender: str
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class ShareDelivery:
    """Stage 1 -> 2, aggregator -> node: the bundles addressed to this node."""

    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class MaskedInput:
    """Stage 2, node -> aggregator: the masked, bit-packed vector."""

    sender: str
    packed: bytes


@dataclass(frozen=True)
class ConsistencyCheckRequest:
    """Stage 2 -> 3, aggregator -> survivors: who sent a masked input (U3), for each to sign."""

    survivors: tuple[str, ...]


@dataclass(frozen=True)
class ConsistencyCheckResponse:
    """Stage 3, node -> aggregator: its signature over the session and the survivor set."""

    sender: str
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3 -> 4, aggregator -> signers: who sent a masked input, who dropped after sharing,
    and every ConsistencyCheck signature, so each node can check all saw the same survivors."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: tuple[tuple[str, bytes], ...] = ()  # (signer, signature over the survivor set)


@dataclass(frozen=True)
class UnmaskResponse:
    """Stage 4, node -> aggregator: b-shares of survivors, s_sk-shares of dropped peers."""

    sender: str
    self_mask_shares: tuple[tuple[str, bytes], ...]  # (owner, share)
    mask_key_shares: tuple[tuple[str, bytes], ...]  # (owner, share)


def payload_bytes(message: Any) -> int:
    """Payload bytes of a message: its bytes, strings and arrays, 8 per number (the part that grows with n and m)."""
    if isinstance(message, bytes):
        return len(message)
    if isinstance(message, np.ndarray):
        return int(message.nbytes)
    if isinstance(message, dict):
        return sum(payload_bytes(key) + payload_bytes(value) for key, value in message.items())
    if isinstance(message, str):
        return len(message.encode("utf-8"))
    if isinstance(message, (tuple, list)):
        return sum(payload_bytes(item) for item in message)
    if is_dataclass(message):
        return sum(payload_bytes(getattr(message, f.name)) for f in fields(message))
    return 8
