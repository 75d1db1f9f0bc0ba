"""Bit-packing of ring elements to exactly `bits` bits each (little-endian bit order).

Uploads shrink from 32 to b bits per coordinate. The encoding is canonical: the length is
exactly ceil(count*bits/8) and unused trailing bits are zero, so one vector has one encoding.
"""

from __future__ import annotations

import io

import numba
import numpy as np

from fedsa_secure.errors import ProtocolError
from fedsa_secure.secagg.ring import RING_DTYPE, check_bits


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for `count` values of `bits` bits."""
    return (count * bits + 7) // 8


_GROUP = 64  # 64 values of b bits fill exactly b little-endian uint64 words
_BLOCK = 1 << 16  # values packed per step by pack() (masking hands over blocks of this size)


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack a 1-D array of integers in [0, 2**bits) into packed_size(len, bits) bytes."""
    check_bits(bits)
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError("pack expects a 1-D integer array")
    if array.size and (array.min() < 0 or int(array.max()) >> bits):
        raise ValueError(f"pack: values must lie in [0, 2**{bits})")
    packer = Packer(array.size, bits)
    for start in range(0, array.size, _BLOCK):
        packer.append(array[start : start + _BLOCK].astype(RING_DTYPE, copy=False))
    return packer.tobytes()


class Packer:
    """Packs one vector of `count` values, appended block by block, straight into the upload.

    Lets masking pack each block while it is still in cache: a compiled loop packs the block
    into uint64 words in a reused scratch, which is appended to a BytesIO sized up front, whose
    getvalue() hands over its buffer without a copy, so the upload is written once, with no
    full-size intermediate. Only the low `bits` bits of each value are kept, which is the
    reduction modulo 2**bits that masking needs.
    """

    def __init__(self, count: int, bits: int, block: int = _BLOCK) -> None:
        check_bits(bits)
        self._count, self._bits, self._done = count, bits, 0
        self._sink = io.BytesIO()
        size = packed_size(count, bits)
        if size:  # allocate the whole upload once (writing past the end zero-fills the gap)
            self._sink.seek(size - 1)
            self._sink.write(b"\0")
            self._sink.seek(0)
        self._words = np.empty(-(-block * bits // 64), dtype="<u8")
        self._bytes = memoryview(self._words.view(np.uint8).data)

    def append(self, values: np.ndarray) -> None:
        """Pack the next values.size uint32 values; every block but the last must hold a multiple of 64."""
        if self._done + values.size > self._count:
            raise ValueError(f"Packer holds {self._count} values; {self._done + values.size} appended")
        if self._done % _GROUP:
            raise ValueError(f"Packer.append: only the last block may hold a number of values not divisible by {_GROUP}")
        if values.size * self._bits > 64 * self._words.size:
            raise ValueError(f"Packer.append takes at most {64 * self._words.size // self._bits} values at a time")
        _pack_into(np.ascontiguousarray(values, dtype=RING_DTYPE), self._bits, self._words)
        self._sink.write(self._bytes[: packed_size(values.size, self._bits)])
        self._done += values.size

    def tobytes(self) -> bytes:
        """The packed vector: packed_size(count, bits) bytes."""
        if self._done != self._count:
            raise ValueError(f"Packer got {self._done} of {self._count} values")
        return self._sink.getvalue()


@numba.njit(cache=True)
def _pack_into(values: np.ndarray, bits: int, words: np.ndarray) -> None:
    """The low `bits` bits of each value, value i at bit i*bits of `words` (little-endian); the
    bits after the last value in its last word are zero."""
    low = np.uint64((1 << bits) - 1)
    held, filled, w = np.uint64(0), 0, 0  # bits of the current word, how many are set, its index
    for i in range(values.size):
        value = np.uint64(values[i]) & low
        held |= value << np.uint64(filled)
        filled += bits
        if filled >= 64:
            words[w] = held
            w += 1
            filled -= 64
            held = value >> np.uint64(bits - filled) if filled else np.uint64(0)
    if filled:
        words[w] = held


def unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack`; ProtocolError if the length or the padding bits are wrong."""
    check_bits(bits)
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise ProtocolError(
            f"packed vector has {len(data)} bytes; {count} values of {bits} bits need {expected}"
        )
    if bits in (8, 16, 32):
        return np.frombuffer(data, dtype=f"<u{bits // 8}").astype(RING_DTYPE)
    groups = -(-count // _GROUP)
    raw = np.zeros(groups * bits * 8, dtype=np.uint8)
    raw[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    words = raw.view("<u8").reshape(groups, bits)
    grid = np.empty((groups, _GROUP), dtype="<u8")
    mask = np.uint64((1 << bits) - 1)
    for j in range(_GROUP):
        word, shift = divmod(j * bits, 64)
        column = words[:, word] >> np.uint64(shift)
        if shift + bits > 64:
            column |= words[:, word + 1] << np.uint64(64 - shift)
        grid[:, j] = column & mask
    flat = grid.reshape(-1)
    if flat[count:].any():  # every bit after count*bits falls into these slots
        raise ProtocolError("packed vector has non-zero padding bits")
    return flat[:count].astype(RING_DTYPE)
