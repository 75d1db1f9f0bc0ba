"""Mask seeds: self masks and signed pairwise masks in Z_{2^b} (uint32, wrapping).

Seeds are HKDF outputs bound to the session id (and, for pairwise masks, to both names);
`crypto.add_keystreams` expands them with the AES-256 PRG straight into the vector being
masked. Sign convention: node i adds PRG(s_ij) for peers j that sort after i and subtracts
it for peers that sort before, so every pair cancels in the sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedsa_secure.crypto import (
    LABEL_PAIRWISE_MASK,
    LABEL_SELF_MASK,
    KeystreamAdder,
    KeystreamReader,
    derive_key,
    shared_secrets,
)
from fedsa_secure.secagg.messages import RoundConfig
from fedsa_secure.secagg.packing import Packer
from fedsa_secure.secagg.quantize import BLOCK, Quantizer
from fedsa_secure.secagg.ring import RING_DTYPE, modulus_mask
from fedsa_secure.secagg.session import encode_fields

SignedSeed = tuple[bytes, bool]  # (PRG seed, subtract?)


def self_mask_seed(seed: bytes, session: bytes) -> bytes:
    """The PRG seed of a node's self mask, from its secret b_i and this session."""
    return derive_key(seed, LABEL_SELF_MASK, session)


def pairwise_seed(secret: bytes, session: bytes, me: str, peer: str) -> bytes:
    """The PRG seed both `me` and `peer` derive from the X25519 secret of their mask keys."""
    low, high = sorted((me, peer))
    context = encode_fields(session, low.encode("utf-8"), high.encode("utf-8"))
    return derive_key(secret, LABEL_PAIRWISE_MASK, context)


def signed_pairwise_seeds(
    me: str, mask_private: bytes, peer_publics: Mapping[str, bytes], session: bytes
) -> list[SignedSeed]:
    """For each peer j != me: (s_ij, subtract) with subtract iff j sorts before me."""
    peers = sorted(peer for peer in peer_publics if peer != me)
    secrets = shared_secrets(mask_private, [peer_publics[peer] for peer in peers])
    return [(pairwise_seed(secret, session, me, peer), peer < me) for peer, secret in zip(peers, secrets)]


def mask_and_pack(
    values: np.ndarray, config: RoundConfig, seeds: Sequence[SignedSeed], rounding: KeystreamReader
) -> bytes:
    """Quantize, add the signed mask streams, reduce mod 2**b and bit-pack `values` (float64, 1-D).

    Done block by block so each block passes through all steps while it is in cache: the
    whole-vector passes, not AES, dominated the cost of masking. `rounding` supplies the
    stochastic-rounding words.
    """
    bits, size = config.modulus_bits, values.size
    packer = Packer(size, bits, BLOCK)
    quantizer = Quantizer(config.quantization, rounding)
    adder = KeystreamAdder(seeds)
    block = np.empty(BLOCK, dtype=RING_DTYPE)
    mask = modulus_mask(bits)
    for start in range(0, size, BLOCK):
        part = block[: min(BLOCK, size - start)]
        quantizer.block(values[start : start + part.size], part)
        adder.add_to(part)
        part &= mask
        packer.append(part)
    return packer.tobytes()
