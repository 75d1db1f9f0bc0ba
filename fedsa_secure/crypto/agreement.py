"""X25519 key agreement on raw 32-byte keys."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedsa_secure.crypto.rand import SYSTEM, Randomness
from fedsa_secure.errors import IntegrityError

KEY_SIZE = 32


def generate_keypair(randomness: Randomness = SYSTEM) -> tuple[bytes, bytes]:
    """Return a fresh (private, public) X25519 key pair as raw 32-byte strings.

    Any 32 random bytes are a valid X25519 private key (RFC 7748 clamps them).
    """
    private = X25519PrivateKey.from_private_bytes(randomness.bytes(KEY_SIZE))
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def public_from_private(private: bytes) -> bytes:
    """Public key of a raw private key; lets a reconstructed key be checked against its advertisement."""
    return _load_private(private).public_key().public_bytes_raw()


def shared_secret(private: bytes, peer_public: bytes) -> bytes:
    """X25519(private, peer_public); refuses malformed keys and low-order points (all-zero output)."""
    return _exchange(_load_private(private), peer_public)


def shared_secrets(private: bytes, peer_publics: Sequence[bytes]) -> list[bytes]:
    """shared_secret with each peer, loading the private key once (a server unmasking a dropped
    node of a large round does thousands)."""
    own = _load_private(private)
    return [_exchange(own, public) for public in peer_publics]


def _exchange(own: X25519PrivateKey, peer_public: bytes) -> bytes:
    if len(peer_public) != KEY_SIZE:
        raise IntegrityError(f"peer public key must be {KEY_SIZE} bytes, got {len(peer_public)}")
    try:
        secret = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # cryptography rejects small-order points this way
        raise IntegrityError("X25519 key agreement failed: the peer public key is invalid") from exc
    if secret == bytes(KEY_SIZE):
        raise IntegrityError("X25519 key agreement produced an all-zero secret: invalid peer key")
    return secret


def _load_private(private: bytes) -> X25519PrivateKey:
    if len(private) != KEY_SIZE:
        raise IntegrityError(f"X25519 private key must be {KEY_SIZE} bytes, got {len(private)}")
    return X25519PrivateKey.from_private_bytes(private)
