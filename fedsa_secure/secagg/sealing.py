"""Sealing a node's pair of Shamir shares (of b_i and s_sk_i) to one peer.

The AEAD key comes from X25519 of the two channel keys via HKDF bound to the session and the
pair of names; the associated data binds session, sender and recipient, so a bundle cannot be
replayed into another round, redirected to another node or reflected back to its sender.
The key is the same in both directions (the names enter sorted), so a node derives it once
per peer in ShareKeys, seals with it, and keeps it to open the peer's bundle in MaskedInput:
k agreements per round for sealing instead of 2k. Nothing else is keyed with it.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedsa_secure.crypto import LABEL_SHARE_SEALING, SYSTEM, Randomness, derive_key, open_sealed, seal, shared_secrets
from fedsa_secure.crypto.aead import NONCE_SIZE, TAG_SIZE
from fedsa_secure.errors import IntegrityError
from fedsa_secure.secagg.session import encode_fields
from fedsa_secure.secagg.shamir import SHARE_SIZE

SEALED_SIZE = NONCE_SIZE + 2 * SHARE_SIZE + TAG_SIZE


def sealing_keys(channel_private: bytes, peer_publics: Mapping[str, bytes], session: bytes, me: str) -> dict[str, bytes]:
    """The AEAD key `me` shares with each peer (peer name -> key), loading the private key once."""
    peers = sorted(peer_publics)
    secrets = shared_secrets(channel_private, [peer_publics[peer] for peer in peers])
    return {peer: _derive(secret, session, me, peer) for peer, secret in zip(peers, secrets)}


def seal_with_key(
    key: bytes, session: bytes, sender: str, recipient: str, shares: tuple[bytes, bytes], randomness: Randomness = SYSTEM
) -> bytes:
    """Encrypt (b-share, s_sk-share) from `sender` to `recipient` under their pair key."""
    return seal(key, shares[0] + shares[1], _associated_data(session, sender, recipient), randomness)


def open_with_key(key: bytes, session: bytes, sender: str, recipient: str, ciphertext: bytes) -> tuple[bytes, bytes]:
    """Decrypt and verify a bundle from `sender` to `recipient`; IntegrityError on any mismatch."""
    plaintext = open_sealed(key, ciphertext, _associated_data(session, sender, recipient))
    if len(plaintext) != 2 * SHARE_SIZE:
        raise IntegrityError(f"share bundle from {sender!r} has the wrong length")
    return plaintext[:SHARE_SIZE], plaintext[SHARE_SIZE:]


def seal_shares(
    channel_private: bytes,
    peer_public: bytes,
    session: bytes,
    sender: str,
    recipient: str,
    shares: tuple[bytes, bytes],
    randomness: Randomness = SYSTEM,
) -> bytes:
    """`seal_with_key` for a single peer, from the raw channel keys (known-answer vectors)."""
    key = sealing_keys(channel_private, {recipient: peer_public}, session, sender)[recipient]
    return seal_with_key(key, session, sender, recipient, shares, randomness)


def open_shares(
    channel_private: bytes, peer_public: bytes, session: bytes, sender: str, recipient: str, ciphertext: bytes
) -> tuple[bytes, bytes]:
    """`open_with_key` for a single peer, from the raw channel keys (known-answer vectors)."""
    key = sealing_keys(channel_private, {sender: peer_public}, session, recipient)[sender]
    return open_with_key(key, session, sender, recipient, ciphertext)


def _derive(secret: bytes, session: bytes, a: str, b: str) -> bytes:
    low, high = sorted((a, b))
    context = encode_fields(session, low.encode("utf-8"), high.encode("utf-8"))
    return derive_key(secret, LABEL_SHARE_SEALING, context)


def _associated_data(session: bytes, sender: str, recipient: str) -> bytes:
    return encode_fields(session, sender.encode("utf-8"), recipient.encode("utf-8"))
