"""Masks: self masks and signed pairwise masks in Z_{2^b} (uint32, wrapping), and masking itself.

Seeds are HKDF outputs bound to the session id (and, for pairwise masks, to both names);
`crypto.KeystreamRows` expands them with the AES-256 PRG block by block, and a compiled
kernel adds them into the vector being masked while both are in cache. Sign convention:
node i adds PRG(s_ij) for peers j that sort after i and subtracts it for peers that sort
before, so every pair cancels in the sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numba
import numpy as np

from fedsa_secure.crypto import (
    LABEL_PAIRWISE_MASK,
    LABEL_SELF_MASK,
    KeystreamReader,
    KeystreamRows,
    derive_key,
    shared_secrets,
)
from fedsa_secure.secagg.messages import RoundConfig
from fedsa_secure.secagg.packing import Packer
from fedsa_secure.secagg.quantize import BLOCK, Quantizer
from fedsa_secure.secagg.ring import RING_DTYPE
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
    """Quantize, add the signed mask streams, reduce mod 2**b and bit-pack `values` (float32/64, 1-D).

    Done block by block so each block passes through all steps while it is in cache, each step
    one compiled loop: whole-vector numpy passes, not AES, used to dominate the cost of masking.
    `rounding` supplies the stochastic-rounding words.
    """
    size = values.size
    packer = Packer(size, config.modulus_bits, BLOCK)  # packing keeps the low b bits: the reduction
    quantizer = Quantizer(config.quantization, rounding)
    masks = _SignedKeystreams(seeds)
    block = np.empty(BLOCK, dtype=RING_DTYPE)
    for start in range(0, size, BLOCK):
        part = block[: min(BLOCK, size - start)]
        quantizer.block(values[start : start + part.size], part)
        masks.add_to(part)
        packer.append(part)
    return packer.tobytes()


def add_signed_keystreams(total: np.ndarray, seeds: Sequence[SignedSeed]) -> None:
    """In place: total += sum(+-keystream_words(seed, len(total))) modulo 2**32 (the aggregator's unmasking)."""
    if total.dtype != np.dtype("<u4") or total.ndim != 1:
        raise ValueError("add_signed_keystreams needs a 1-D little-endian uint32 array")
    masks = _SignedKeystreams(seeds)
    for start in range(0, total.size, BLOCK):
        masks.add_to(total[start : start + BLOCK])


class _SignedKeystreams:
    """The signed sum of several streams, added block by block (at most BLOCK words per call)."""

    def __init__(self, seeds: Sequence[SignedSeed]) -> None:
        self._rows = KeystreamRows([seed for seed, _ in seeds])
        # Subtracting w is adding (2**32 - 1) * w modulo 2**32: one multiply-add loop serves both signs.
        self._factors = np.array([_MINUS_ONE if subtract else 1 for _, subtract in seeds], dtype=RING_DTYPE)

    def add_to(self, part: np.ndarray) -> None:
        for first, rows in self._rows.next(part.size):
            _add_rows(part, rows, self._factors[first : first + len(rows)])


_MINUS_ONE = (1 << 32) - 1


@numba.njit(cache=True)
def _add_rows(out: np.ndarray, rows: np.ndarray, factors: np.ndarray) -> None:
    """out += sum_j factors[j] * rows[j] modulo 2**32, four rows per pass over `out`: with one
    pass per row the loads and stores of `out`, not the mask words, bounded the speed."""
    n, count = out.size, rows.shape[0]
    j = 0
    while j + 4 <= count:
        a, b, c, d = rows[j, :n], rows[j + 1, :n], rows[j + 2, :n], rows[j + 3, :n]
        fa, fb, fc, fd = factors[j], factors[j + 1], factors[j + 2], factors[j + 3]
        for i in range(n):
            out[i] += fa * a[i] + fb * b[i] + fc * c[i] + fd * d[i]
        j += 4
    while j < count:
        a, fa = rows[j, :n], factors[j]
        for i in range(n):
            out[i] += fa * a[i]
        j += 1
