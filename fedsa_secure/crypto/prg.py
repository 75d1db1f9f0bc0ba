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
_TOP_BITS = b"\x00\x00\x00\x80" * _CHUNK_WORDS  # little-endian uint32 words 2**31
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


class KeystreamAdder:
    """Several signed streams consumed in step: each `add_to(part)` adds the next len(part) words
    of every stream into `part` (mod 2**32). Lets a caller mask a vector chunk by chunk while
    each chunk is in cache, without ever allocating a full-length mask."""

    def __init__(self, signed_seeds: Sequence[tuple[bytes, bool]]) -> None:
        self._streams = [(_stream(seed).update_into, np.subtract if subtract else np.add) for seed, subtract in signed_seeds]
        self._buffer = bytearray(4 * _CHUNK_WORDS + 15)  # update_into wants block_size - 1 spare bytes
        self._words = np.frombuffer(self._buffer, dtype="<u4", count=_CHUNK_WORDS)
        self._used = 0

    def add_to(self, part: np.ndarray) -> None:
        """In place: part += the next part.size words of every stream, signed."""
        if part.dtype != np.dtype("<u4") or part.ndim != 1:
            raise ValueError("KeystreamAdder needs a 1-D little-endian uint32 array")
        for start in range(0, part.size, _CHUNK_WORDS):
            piece = part[start : start + _CHUNK_WORDS]
            size = piece.size
            self._used += 4 * size
            if self._used > _MAX_STREAM_BYTES:
                raise ValueError(f"a PRG stream holds at most {_MAX_STREAM_BYTES} bytes")
            zeros, words, buffer = memoryview(_ZEROS)[: 4 * size], self._words[:size], self._buffer
            for expand, combine in self._streams:
                expand(zeros, buffer)
                combine(piece, words, out=piece)


class KeystreamReader:
    """One stream read block by block; each read returns a view that the next read overwrites."""

    def __init__(self, seed: bytes) -> None:
        self._stream = _stream(seed)
        self._buffer = bytearray(4 * _CHUNK_WORDS + 15)
        self._words = np.frombuffer(self._buffer, dtype="<u4", count=_CHUNK_WORDS)

    def read(self, count: int) -> np.ndarray:
        """The next `count` (at most 65,536) words of the stream."""
        return self._next(count, _ZEROS)

    def read_centred(self, count: int) -> np.ndarray:
        """The next `count` words u, as int32 values u - 2**31.

        Encrypting words 2**31 instead of zeros flips each keystream word's top bit for free,
        and (u XOR 2**31) read as int32 is u - 2**31: numpy converts int32 to float64 much
        faster than uint32.
        """
        return self._next(count, _TOP_BITS).view("<i4")

    def _next(self, count: int, plaintext: bytes) -> np.ndarray:
        if not 0 <= count <= _CHUNK_WORDS:
            raise ValueError(f"read at most {_CHUNK_WORDS} words at a time, asked for {count}")
        self._stream.update_into(memoryview(plaintext)[: 4 * count], self._buffer)
        return self._words[:count]


def add_keystreams(total: np.ndarray, signed_seeds: Sequence[tuple[bytes, bool]]) -> None:
    """In place: total += sum(+-keystream_words(seed, len(total))) modulo 2**32.

    `signed_seeds` holds (seed, subtract) pairs; see KeystreamAdder for the chunked expansion.
    """
    if total.dtype != np.dtype("<u4") or total.ndim != 1 or not total.flags.c_contiguous:
        raise ValueError("add_keystreams needs a contiguous 1-D little-endian uint32 array")
    if 4 * total.size > _MAX_STREAM_BYTES:
        raise ValueError(f"a PRG stream holds at most {_MAX_STREAM_BYTES} bytes")
    KeystreamAdder(signed_seeds).add_to(total)
