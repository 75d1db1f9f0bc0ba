"""SHA-256 and HMAC-SHA256, so that protocol code gets every cryptographic function from `fedsa_secure.crypto`."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, hmac


def sha256(data: bytes) -> bytes:
    """The 32-byte SHA-256 digest of `data`."""
    return hashlib.sha256(data).digest()


def keyed_digest(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of `data` under `key`: without the key, the digest reveals nothing about `data`."""
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()
