"""Cryptographic pseudo-random generator: the AES-256 counter-mode keystream of a 32-byte seed.

The stream is AES-256-CTR with initial counter block 0^96 || 00000002 and a 32-bit block
counter, i.e. exactly GCM's GCTR keystream for an all-zero 96-bit nonce. It is produced
through OpenSSL's GCM encryptor because that code path (stitched AES-NI/VAES) runs about
twice as fast as its plain CTR path; the GHASH tag is never finalised or used. A stream is
at most a few hundred MiB, far below the 2**32-block counter limit. Every seed is a fresh
HKDF output or a fresh random key used for exactly one stream, so no key/counter pair repeats.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

SEED_SIZE = 32
_ZERO_NONCE = bytes(12)
_CHUNK_WORDS = 1 << 16  # 256 KiB of keystream per step and stream
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
    """Expand `count` words of each stream and throw them away: the raw cost that masking is
    measured against (benchmarks' mask-efficiency baseline)."""
    buffer = bytearray(4 * _CHUNK_WORDS + 15)
    zeros = memoryview(_ZEROS)
    for seed in seeds:
        stream = _stream(seed)
        for start in range(0, count, _CHUNK_WORDS):
            stream.update_into(zeros[: 4 * min(_CHUNK_WORDS, count - start)], buffer)


class KeystreamRows:
    """Several streams consumed in step, a block at a time, for masking a vector block by block.

    `next(count)` yields the next `count` words of every stream as (rows, count) uint32 arrays,
    ROWS streams at a time in seed order: the arithmetic on them (secagg) then reads each
    mask word once while it is in cache, and memory stays at ROWS blocks however many streams.
    Each yielded array is overwritten by the next.
    """

    ROWS = 12  # streams per yielded array: 12 x 256 KiB = 3 MiB stays in the last-level cache

    def __init__(self, seeds: Sequence[bytes]) -> None:
        self._streams = [_stream(seed).update_into for seed in seeds]
        rows = min(self.ROWS, len(self._streams))
        self._buffer = np.empty(4 * rows * _CHUNK_WORDS + 15, dtype=np.uint8)  # update_into wants 15 spare bytes
        self._words = self._buffer[:-15].view("<u4").reshape(rows, _CHUNK_WORDS)
        self._used = 0

    def next(self, count: int) -> Iterator[tuple[int, np.ndarray]]:
        """(index of the first stream, its rows) for every group of ROWS streams; at most 65,536 words."""
        if not 0 <= count <= _CHUNK_WORDS:
            raise ValueError(f"expand at most {_CHUNK_WORDS} words at a time, asked for {count}")
        self._used += 4 * count
        if self._used > _MAX_STREAM_BYTES:
            raise ValueError(f"a PRG stream holds at most {_MAX_STREAM_BYTES} bytes")
        zeros, buffer, stride = memoryview(_ZEROS)[: 4 * count], memoryview(self._buffer.data), 4 * _CHUNK_WORDS
        for first in range(0, len(self._streams), self.ROWS):
            group = self._streams[first : first + self.ROWS]
            for row, expand in enumerate(group):
                expand(zeros, buffer[row * stride :])  # writes 4*count bytes; the rest is update_into's spare room
            yield first, self._words[: len(group), :count]


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
