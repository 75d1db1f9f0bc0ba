"""Bit-packing: exact size, round trip, canonical encoding, length validation."""

from __future__ import annotations

import numpy as np
import pytest

from fedsa_secure.crypto import keystream_words
from fedsa_secure.errors import ProtocolError
from fedsa_secure.secagg.packing import Packer, pack, packed_size, unpack


def _values(count: int, bits: int) -> np.ndarray:
    return keystream_words(bits.to_bytes(32, "big"), count) & np.uint32((1 << bits) - 1)


@pytest.mark.parametrize("bits", [1, 3, 7, 8, 13, 16, 19, 24, 31, 32])
@pytest.mark.parametrize("count", [0, 1, 7, 1001])
def test_round_trip(bits: int, count: int) -> None:
    values = _values(count, bits)
    data = pack(values, bits)
    assert len(data) == (count * bits + 7) // 8 == packed_size(count, bits)
    out = unpack(data, bits, count)
    assert out.dtype == np.uint32
    assert np.array_equal(out, values)


def test_known_layout_little_endian_bits() -> None:
    assert pack(np.array([1, 2, 3], dtype=np.uint32), 2) == bytes([0b00111001])
    assert pack(np.array([0x0102], dtype=np.uint32), 16) == b"\x02\x01"


@pytest.mark.parametrize("bits", [5, 8, 32])
def test_wrong_length_rejected(bits: int) -> None:
    data = pack(_values(11, bits), bits)
    with pytest.raises(ProtocolError, match="bytes"):
        unpack(data[:-1], bits, 11)
    with pytest.raises(ProtocolError, match="bytes"):
        unpack(data + b"\x00", bits, 11)


def test_non_zero_padding_rejected() -> None:
    data = bytearray(pack(np.array([1, 2, 3], dtype=np.uint32), 5))  # 15 bits in 2 bytes
    data[-1] |= 0x80
    with pytest.raises(ProtocolError, match="padding"):
        unpack(bytes(data), 5, 3)


def test_out_of_range_values_rejected() -> None:
    with pytest.raises(ValueError):
        pack(np.array([8], dtype=np.uint32), 3)
    with pytest.raises(ValueError):
        pack(np.array([-1], dtype=np.int64), 3)


def _reference(values: np.ndarray, bits: int) -> bytes:
    """The little-endian bit stream, built with Python integers: value i at bit i*bits."""
    total = sum(int(v) << (i * bits) for i, v in enumerate(values))
    return total.to_bytes(packed_size(values.size, bits), "little")


@pytest.mark.parametrize("bits", range(1, 33))
def test_every_width_matches_the_reference_bit_stream(bits: int) -> None:
    for count in (1, 63, 64, 65, 300):
        values = _values(count, bits)
        assert pack(values, bits) == _reference(values, bits)


@pytest.mark.parametrize("bits", [5, 16, 22, 23, 24])
def test_packer_blocks_concatenate_to_the_whole_encoding(bits: int) -> None:
    values = np.random.default_rng(bits).integers(0, 2**bits, 1000).astype(np.uint32)
    packer = Packer(values.size, bits)
    for start, end in ((0, 128), (128, 576), (576, 1000)):  # whole records; the last ends in a partial one
        packer.append(values[start:end])
    assert packer.tobytes() == pack(values, bits)


def test_packer_refuses_a_block_after_a_partial_record() -> None:
    packer = Packer(1000, 22)
    packer.append(np.zeros(10, dtype=np.uint32))  # 22-bit records hold 4 values
    with pytest.raises(ValueError, match="last block"):
        packer.append(np.zeros(10, dtype=np.uint32))


def test_packer_refuses_too_many_values_or_an_early_tobytes() -> None:
    packer = Packer(100, 22)
    with pytest.raises(ValueError, match="holds 100"):
        packer.append(np.zeros(101, dtype=np.uint32))
    packer.append(np.zeros(64, dtype=np.uint32))
    with pytest.raises(ValueError, match="64 of 100"):
        packer.tobytes()
