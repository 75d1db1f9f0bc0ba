"""HKDF-SHA256 key derivation with explicit, versioned domain-separation labels.

Every derived key names its purpose (label) and the round it belongs to (context), so a key
derived for one use can never be mistaken for, or collide with, a key for another.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# The only labels in use; one place so that no two purposes can share a label by accident.
LABEL_SELF_MASK = "secagg/self-mask"
LABEL_PAIRWISE_MASK = "secagg/pairwise-mask"
LABEL_SHARE_SEALING = "secagg/share-sealing"
LABEL_GRAPH = "secagg/neighbour-graph"

_PREFIX = b"fedsa-secure/v1/"


def derive_key(secret: bytes, label: str, context: bytes, length: int = 32) -> bytes:
    """Derive `length` bytes from `secret` for the purpose `label` within `context`.

    info = b"fedsa-secure/v1/" + label + b"\\x00" + context; the NUL terminator keeps the
    label/context split unambiguous, which is why a label may not contain NUL itself.
    """
    if "\x00" in label:
        raise ValueError("a KDF label must not contain NUL")
    info = _PREFIX + label.encode("utf-8") + b"\x00" + context
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)
