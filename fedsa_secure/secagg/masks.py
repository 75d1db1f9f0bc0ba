"""Mask seeds: self masks and signed pairwise masks in Z_{2^b} (uint32, wrapping).

Seeds are HKDF outputs bound to the session id (and, for pairwise masks, to both names);
`crypto.add_keystreams` expands them with the AES-256 PRG straight into the vector being
masked. Sign convention: node i adds PRG(s_ij) for peers j that sort after i and subtracts
it for peers that sort before, so every pair cancels in the sum.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedsa_secure.crypto import LABEL_PAIRWISE_MASK, LABEL_SELF_MASK, derive_key, shared_secret
from fedsa_secure.secagg.session import encode_fields

SignedSeed = tuple[bytes, bool]  # (PRG seed, subtract?)


def self_mask_seed(seed: bytes, session: bytes) -> bytes:
    """The PRG seed of a node's self mask, from its secret b_i and this session."""
    return derive_key(seed, LABEL_SELF_MASK, session)


def pairwise_seed(mask_private: bytes, peer_public: bytes, session: bytes, me: str, peer: str) -> bytes:
    """The PRG seed both `me` and `peer` derive from X25519 of their mask keys."""
    low, high = sorted((me, peer))
    context = encode_fields(session, low.encode("utf-8"), high.encode("utf-8"))
    return derive_key(shared_secret(mask_private, peer_public), LABEL_PAIRWISE_MASK, context)


def signed_pairwise_seeds(
    me: str, mask_private: bytes, peer_publics: Mapping[str, bytes], session: bytes
) -> list[SignedSeed]:
    """For each peer j != me: (s_ij, subtract) with subtract iff j sorts before me."""
    return [
        (pairwise_seed(mask_private, public, session, me, peer), peer < me)
        for peer, public in sorted(peer_publics.items())
        if peer != me
    ]
