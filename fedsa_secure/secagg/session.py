"""Round configuration checks, the session id, and participants' Shamir x-coordinates.

The session id is SHA-256 over an unambiguous, length-prefixed encoding of the round config
and every advertised key. It is bound into every derived key and every sealed share, so
messages from another round, or a roster shown differently to different nodes, fail to verify.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from fedsa_secure.crypto import sha256
from fedsa_secure.errors import ProtocolError
from fedsa_secure.secagg.graph import check_degree, effective_degree
from fedsa_secure.secagg.messages import AdvertiseKeys, RoundConfig
from fedsa_secure.secagg.quantize import check_capacity

NONCE_SIZE = 32
CONTEXT_SIZES = (0, 32)  # no application context, or a SHA-256 digest
_DOMAIN = b"fedsa-secure/v1/secagg-session"


def encode_fields(*fields: bytes) -> bytes:
    """Concatenate byte strings, each prefixed by its 4-byte big-endian length (injective)."""
    return b"".join(struct.pack(">I", len(field)) + field for field in fields)


def validate_config(config: RoundConfig) -> None:
    """Refuse a config the protocol cannot run safely; ProtocolError names the bad field."""
    names = config.participants
    if not names or any(not name for name in names):
        raise ProtocolError("participants must be a non-empty tuple of non-empty names")
    if list(names) != sorted(set(names)):
        raise ProtocolError("participants must be sorted and free of duplicates")
    check_degree(config)
    size = effective_degree(config) + 1  # a node's shares go to its k neighbours and itself
    # 2t > k+1: the aggregator cannot split a neighbourhood into two camps that each reveal t shares.
    if not (2 * config.threshold > size and config.threshold <= size):
        raise ProtocolError(
            f"threshold must satisfy (k+1)/2 < t <= k+1 with k+1={size} (n={len(names)}), got t={config.threshold}"
        )
    if config.vector_length < 1:
        raise ProtocolError(f"vector_length must be >= 1, got {config.vector_length}")
    if config.round < 0:
        raise ProtocolError(f"round must be >= 0, got {config.round}")
    if len(config.nonce) != NONCE_SIZE:
        raise ProtocolError(f"round nonce must be {NONCE_SIZE} bytes, got {len(config.nonce)}")
    if len(config.context) not in CONTEXT_SIZES:
        raise ProtocolError(f"round context must be empty or a {CONTEXT_SIZES[-1]}-byte digest, got {len(config.context)} bytes")
    check_capacity(config)


def x_coordinate(config: RoundConfig, name: str) -> int:
    """A participant's Shamir x-coordinate: 1 + its index in the sorted participants."""
    try:
        return 1 + config.participants.index(name)
    except ValueError:
        raise ProtocolError(f"{name!r} is not a participant of round {config.round}") from None


def config_bytes(config: RoundConfig) -> bytes:
    """The canonical encoding of every field of a round config (signed in advertisements, hashed into the session)."""
    spec = config.quantization
    return encode_fields(
        struct.pack(">Q", config.round),
        encode_fields(*(name.encode("utf-8") for name in config.participants)),
        struct.pack(">Q", config.threshold),
        struct.pack(">Q", config.vector_length),
        struct.pack(">d", spec.clip),
        struct.pack(">Q", spec.level_bits),
        struct.pack(">Q", config.modulus_bits),
        config.nonce,
        struct.pack(">Q", config.degree),
        config.context,
    )


def session_id(config: RoundConfig, advertisements: Sequence[AdvertiseKeys]) -> bytes:
    """SHA-256 of the canonical encoding of `config` and all advertisements sorted by sender."""
    keys_bytes = encode_fields(
        *(
            encode_fields(ad.sender.encode("utf-8"), ad.channel_public_key, ad.mask_public_key)
            for ad in sorted(advertisements, key=lambda ad: ad.sender)
        )
    )
    return sha256(encode_fields(_DOMAIN, config_bytes(config), keys_bytes))
