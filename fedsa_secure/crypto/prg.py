"""Cryptographic pseudo-random generator: the AES-256 counter-mode keystream of a 32-byte seed.

The stream is AES-256-CTR with initial counter block 0^96 || 00000002 and a 32-bit block
counter, i.e. exactly GCM's GCTR keystream for an all-zero 96-bit nonce. It is produced
through OpenSSL's GCM encryptor because that code path (stitched AES-NI/VAES) runs about
twice as fast as its plain CTR path; the GHASH tag is never finalised or used. A stream is
at most a few hundred MiB, far below the 2**32-block counter limit. Every seed is a fresh
HKDF output or a fresh random key used for exactly one stream, so no key/counter pair repeats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

SEED_SIZE = 32
_ZERO_NONCE = bytes(12)
_CHUNK_WORDS = 1 << 16  # 256 KiB of keystream per step: keeps the accumulator chunk in L2 cache
_ZEROS = bytes(4 * _CHUNK_WORDS)
_MAX_STREAM_BYTES = 16 * 2**32 - 32  # GCM's per-message limit, also the 32-bit counter's range


def _stream(seed: bytes) -> CipherContext:
    if len(seed) != SEED_SIZE:
        raise ValueError(f"PRG seed must be {SEED_SIZE} bytes, got {len(seed)}")
    return Cipher(algorithms.AES(seed), modes.GCM(_ZERO_NONCE)).encryptor()


def keystream_bytes(seed: bytes, n: int) -> bytes:
    """The first `n` bytes of the keystream keyed by `seed`."""
    if not 0 <= n <= _MAX_STREAM_BYTES:
        raise ValueError(f"a PRG stream holds 0..{_MAX_STREAM_BYTES} bytes, asked for {n}")
    return _stream(seed).update(bytes(n))  # encrypting zeros yields the raw keystream


def keystream_words(seed: bytes, count: int) -> np.ndarray:
    """The same stream as `count` little-endian uint32 words (a read-only array)."""
    return np.frombuffer(keystream_bytes(seed, 4 * count), dtype="<u4")


def expand_keystreams(seeds: Sequence[bytes], count: int) -> None:
    """Expand `count` words of each stream and throw them away: the raw cost that
    `add_keystreams` is measured against (benchmarks' mask-efficiency baseline)."""
    buffer = bytearray(4 * _CHUNK_WORDS + 15)
    zeros = memoryview(_ZEROS)
    for seed in seeds:
        stream = _stream(seed)
        for start in range(0, count, _CHUNK_WORDS):
            stream.update_into(zeros[: 4 * min(_CHUNK_WORDS, count - start)], buffer)


def add_keystreams(total: np.ndarray, signed_seeds: Sequence[tuple[bytes, bool]]) -> None:
    """In place: total += sum(+-keystream_words(seed, len(total))) modulo 2**32.

    `signed_seeds` holds (seed, subtract) pairs. The streams are expanded chunk by chunk
    into one small buffer and added straight into `total`, so no full-length mask array is
    ever allocated and each chunk of `total` stays in cache while all streams pass over it.
    """
    if total.dtype != np.dtype("<u4") or total.ndim != 1 or not total.flags.c_contiguous:
        raise ValueError("add_keystreams needs a contiguous 1-D little-endian uint32 array")
    if 4 * total.size > _MAX_STREAM_BYTES:
        raise ValueError(f"a PRG stream holds at most {_MAX_STREAM_BYTES} bytes")
    streams = [(_stream(seed), subtract) for seed, subtract in signed_seeds]
    buffer = bytearray(4 * _CHUNK_WORDS + 15)  # update_into wants block_size - 1 spare bytes
    words = np.frombuffer(buffer, dtype="<u4", count=_CHUNK_WORDS)
    zeros = memoryview(_ZEROS)
    for start in range(0, total.size, _CHUNK_WORDS):
        part = total[start : start + _CHUNK_WORDS]
        size = part.size
        for stream, subtract in streams:
            stream.update_into(zeros[: 4 * size], buffer)
            if subtract:
                part -= words[:size]
            else:
                part += words[:size]
