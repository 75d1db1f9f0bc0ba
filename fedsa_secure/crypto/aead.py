"""Authenticated encryption (ChaCha20-Poly1305) with a random nonce carried in the blob."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedsa_secure.crypto.rand import SYSTEM, Randomness
from fedsa_secure.errors import IntegrityError

NONCE_SIZE = 12
TAG_SIZE = 16


def seal(key: bytes, plaintext: bytes, associated_data: bytes, randomness: Randomness = SYSTEM) -> bytes:
    """Encrypt and authenticate; returns nonce || ciphertext || tag.

    A random 96-bit nonce is safe here because each key seals only a handful of messages.
    """
    nonce = randomness.bytes(NONCE_SIZE)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, blob: bytes, associated_data: bytes) -> bytes:
    """Verify and decrypt a `seal` blob; IntegrityError if anything (data, key, context) differs."""
    if len(blob) < NONCE_SIZE + TAG_SIZE:
        raise IntegrityError(f"sealed blob too short ({len(blob)} bytes)")
    try:
        return ChaCha20Poly1305(key).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], associated_data)
    except InvalidTag as exc:
        raise IntegrityError("authentication failed: ciphertext, key or associated data differ") from exc
