"""Sealing a node's pair of Shamir shares (of b_i and s_sk_i) to one peer.

The AEAD key comes from X25519 of the two channel keys via HKDF bound to the session and the
pair of names; the associated data binds session, sender and recipient, so a bundle cannot be
replayed into another round, redirected to another node or reflected back to its sender.
"""

from __future__ import annotations

from fedsa_secure.crypto import LABEL_SHARE_SEALING, SYSTEM, Randomness, derive_key, open_sealed, seal, shared_secret
from fedsa_secure.crypto.aead import NONCE_SIZE, TAG_SIZE
from fedsa_secure.errors import IntegrityError
from fedsa_secure.secagg.session import encode_fields
from fedsa_secure.secagg.shamir import SHARE_SIZE

SEALED_SIZE = NONCE_SIZE + 2 * SHARE_SIZE + TAG_SIZE


def seal_shares(
    channel_private: bytes,
    peer_public: bytes,
    session: bytes,
    sender: str,
    recipient: str,
    shares: tuple[bytes, bytes],
    randomness: Randomness = SYSTEM,
) -> bytes:
    """Encrypt (b-share, s_sk-share) from `sender` to `recipient`."""
    key = _key(channel_private, peer_public, session, sender, recipient)
    return seal(key, shares[0] + shares[1], _associated_data(session, sender, recipient), randomness)


def open_shares(
    channel_private: bytes, peer_public: bytes, session: bytes, sender: str, recipient: str, ciphertext: bytes
) -> tuple[bytes, bytes]:
    """Decrypt and verify a bundle from `sender` to `recipient`; IntegrityError on any mismatch."""
    key = _key(channel_private, peer_public, session, sender, recipient)
    plaintext = open_sealed(key, ciphertext, _associated_data(session, sender, recipient))
    if len(plaintext) != 2 * SHARE_SIZE:
        raise IntegrityError(f"share bundle from {sender!r} has the wrong length")
    return plaintext[:SHARE_SIZE], plaintext[SHARE_SIZE:]


def _key(channel_private: bytes, peer_public: bytes, session: bytes, a: str, b: str) -> bytes:
    low, high = sorted((a, b))
    context = encode_fields(session, low.encode("utf-8"), high.encode("utf-8"))
    return derive_key(shared_secret(channel_private, peer_public), LABEL_SHARE_SEALING, context)


def _associated_data(session: bytes, sender: str, recipient: str) -> bytes:
    return encode_fields(session, sender.encode("utf-8"), recipient.encode("utf-8"))
