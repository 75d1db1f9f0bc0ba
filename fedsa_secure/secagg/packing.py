"""Bit-packing of ring elements to exactly `bits` bits each (little-endian bit order).

Uploads shrink from 32 to b bits per coordinate. The encoding is canonical: the length is
exactly ceil(count*bits/8) and unused trailing bits are zero, so one vector has one encoding.
"""

from __future__ import annotations

import io
import math

import numpy as np

from fedsa_secure.errors import ProtocolError
from fedsa_secure.secagg.ring import RING_DTYPE, check_bits


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for `count` values of `bits` bits."""
    return (count * bits + 7) // 8


_GROUP = 64  # unpack: 64 values of b bits fill exactly b little-endian uint64 words
_BLOCK = 1 << 16  # values packed per step by pack() (masking hands over blocks of this size)
_WHOLE_BYTES = (8, 16, 32)  # widths whose encoding is a plain little-endian array


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


def record_values(bits: int) -> int:
    """Values per record: the fewest (a power of two) whose bits fill whole bytes, at least 8.

    At least 8 bytes, so that one uint64 store per record and word never overlaps the same
    word of the next record; at most 4 words (31 bytes).
    """
    count = 8 // math.gcd(bits, 8)  # the fewest values that end on a byte boundary
    while count * bits < 64:
        count *= 2
    return count


Term = tuple[int, int, bool]  # (value j of the record, shift, True = right shift)


def record_plan(bits: int, count: int) -> list[list[Term]]:
    """For each uint64 word of a record: the values it holds. Value j starts at bit j*bits and
    its top bits spill into the next word when it crosses a word boundary."""
    words: list[list[Term]] = [[] for _ in range(-(-count * bits // 64))]
    for j in range(count):
        word, shift = divmod(j * bits, 64)
        words[word].append((j, shift, False))
        if shift + bits > 64:
            words[word + 1].append((j, 64 - shift, True))
    return words


class Packer:
    """Packs one vector of `count` values, appended block by block, straight into the upload.

    Lets masking pack each block while it is still in cache, with a handful of whole-array
    operations per block: adjacent values are first merged in pairs (v0 | v1 << b, one 64-bit
    lane each); each record of g values (g/2 pairs) is then built in W uint64 words by
    shift-ors and written with W strided, unaligned 8-byte stores into a block-sized scratch,
    last word first: a record's last word may overhang into the next record's first word,
    which is stored after it and overwrites the overhang. The scratch (in cache, reused) is
    then appended to a BytesIO sized up front, whose getvalue() hands over its buffer without
    a copy: the upload is written to fresh memory once (its page faults cost about as much as
    the packing), with no full-size intermediate. `append` trusts its caller: values must
    already lie in [0, 2**bits).
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
        if bits in _WHOLE_BYTES:
            self._whole = np.empty(block, dtype=f"<u{bits // 8}")
            return
        self._group = record_values(bits)
        self._record = self._group * bits // 8
        block_records = -(-block // self._group)
        # One spare record: the last record's last word store overhangs its end by under 8 bytes.
        self._scratch_bytes = np.zeros((block_records + 1) * self._record, dtype=np.uint8)
        self._plan = record_plan(2 * bits, self._group // 2)
        self._stores = [self._word_view(w, block_records) for w in range(len(self._plan))]
        self._pairs = np.empty(block_records * self._group // 2, dtype="<u8")
        self._word = np.empty(block_records, dtype="<u8")
        self._scratch = np.empty(block_records, dtype="<u8")

    def _word_view(self, word: int, records: int) -> np.ndarray:
        """Word `word` of every record: an unaligned uint64 view with the record size as stride."""
        return np.ndarray(
            (records,), dtype="<u8", buffer=self._scratch_bytes, offset=8 * word, strides=(self._record,)
        )

    def append(self, values: np.ndarray) -> None:
        """Pack the next values.size uint32 values; every block but the last must fill whole records."""
        if self._done + values.size > self._count:
            raise ValueError(f"Packer holds {self._count} values; {self._done + values.size} appended")
        if self._bits == 32:
            self._sink.write(np.ascontiguousarray(values, dtype="<u4"))
        elif self._bits in _WHOLE_BYTES:
            if values.size > self._whole.size:
                raise ValueError(f"Packer.append takes at most {self._whole.size} values at a time")
            out = self._whole[: values.size]
            np.copyto(out, values, casting="unsafe")
            self._sink.write(out)
        else:
            self._append_records(np.ascontiguousarray(values, dtype=RING_DTYPE))
        self._done += values.size

    def _append_records(self, values: np.ndarray) -> None:
        group = self._group
        if self._done % group:
            raise ValueError(f"Packer.append: only the last block may end inside a {group}-value record")
        count = values.size
        records = -(-count // group)
        if records > self._word.size:
            raise ValueError(f"Packer.append takes at most {self._word.size * group} values at a time")
        if count % group:  # the last, partial record: zero padding
            values = np.concatenate([values, np.zeros(records * group - count, dtype=RING_DTYPE)])
        columns = self._merge_pairs(values).reshape(records, group // 2)
        out, tmp = self._word[:records], self._scratch[:records]
        for store, terms in zip(reversed(self._stores), reversed(self._plan)):
            store[:records] = self._build_word(columns, terms, out, tmp)
        size = packed_size(self._done + count, self._bits) - self._done // group * self._record
        self._sink.write(memoryview(self._scratch_bytes)[:size])

    @staticmethod
    def _build_word(columns: np.ndarray, terms: list[Term], out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
        """OR together the shifted pairs one word holds (an unshifted pair is used in place)."""
        (j, shift, right), *rest = terms
        word = _shifted(columns[:, j], shift, right, out)
        for j, shift, right in rest:
            word = np.bitwise_or(word, _shifted(columns[:, j], shift, right, tmp), out=out)
        return word

    def _merge_pairs(self, values: np.ndarray) -> np.ndarray:
        """v0 | v1 << bits for each adjacent pair, from the uint64 view (v0 | v1 << 32) of the pair."""
        raw = values.view("<u8")
        pairs = self._pairs[: raw.size]
        np.right_shift(raw, 32, out=pairs)
        pairs *= (1 << 32) - (1 << self._bits)
        np.subtract(raw, pairs, out=pairs)
        return pairs

    def tobytes(self) -> bytes:
        """The packed vector: packed_size(count, bits) bytes."""
        if self._done != self._count:
            raise ValueError(f"Packer got {self._done} of {self._count} values")
        return self._sink.getvalue()


def _shifted(column: np.ndarray, shift: int, right: bool, out: np.ndarray) -> np.ndarray:
    """`column` shifted into `out`, or `column` itself when there is nothing to shift."""
    if not shift:
        return column
    return (np.right_shift if right else np.left_shift)(column, shift, out=out)


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
