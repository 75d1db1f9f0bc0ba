"""Bit-packing of ring elements to exactly `bits` bits each (little-endian bit order).

Uploads shrink from 32 to b bits per coordinate. The encoding is canonical: the length is
exactly ceil(count*bits/8) and unused trailing bits are zero, so one vector has one encoding.
"""

from __future__ import annotations

import numpy as np

from fedsa_secure.errors import ProtocolError
from fedsa_secure.secagg.ring import RING_DTYPE, check_bits


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for `count` values of `bits` bits."""
    return (count * bits + 7) // 8


_GROUP = 64  # 64 values of b bits fill exactly b little-endian uint64 words


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack a 1-D array of integers in [0, 2**bits) into packed_size(len, bits) bytes."""
    check_bits(bits)
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError("pack expects a 1-D integer array")
    if array.size and (array.min() < 0 or int(array.max()) >> bits):
        raise ValueError(f"pack: values must lie in [0, 2**{bits})")
    if bits in (8, 16, 32):
        return array.astype(f"<u{bits // 8}").tobytes()
    groups = -(-array.size // _GROUP)
    grid = np.zeros((groups, _GROUP), dtype="<u8")
    grid.reshape(-1)[: array.size] = array
    words = np.zeros((groups, bits), dtype="<u8")
    for j in range(_GROUP):  # value j of every group lands at bit offset j*bits of that group
        word, shift = divmod(j * bits, 64)
        column = grid[:, j]
        words[:, word] |= column << np.uint64(shift)
        if shift + bits > 64:
            words[:, word + 1] |= column >> np.uint64(64 - shift)
    return words.tobytes()[: packed_size(array.size, bits)]


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
