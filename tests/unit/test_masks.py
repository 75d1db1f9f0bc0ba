"""Masking arithmetic: signed keystream sums and the fused quantize-mask-pack pipeline, against
plain numpy references built from the raw streams."""

from __future__ import annotations

import numpy as np
import pytest

from fedsa_secure.crypto import KeystreamReader, keystream_words
from fedsa_secure.secagg.masks import add_signed_keystreams, mask_and_pack
from fedsa_secure.secagg.messages import QuantizationSpec, RoundConfig
from fedsa_secure.secagg.packing import unpack
from fedsa_secure.secagg.quantize import BLOCK, Quantizer


def signed_sum(total: np.ndarray, seeds: list[tuple[bytes, bool]]) -> np.ndarray:
    expected = total.copy()
    for seed, subtract in seeds:
        words = keystream_words(seed, total.size)
        expected = expected - words if subtract else expected + words
    return expected


@pytest.mark.parametrize("streams", [0, 1, 3, 4, 5, 13, 26])  # 4-row passes, their remainders, several groups
@pytest.mark.parametrize("length", [1, 1000, BLOCK + 3])  # below, within and across blocks
def test_add_signed_keystreams_matches_the_explicit_sum(streams: int, length: int) -> None:
    seeds = [(bytes([i + 1]) * 32, i % 3 == 1) for i in range(streams)]
    total = np.arange(length, dtype=np.uint32) * np.uint32(2_654_435_761)  # spans the whole uint32 range
    expected = signed_sum(total, seeds)
    add_signed_keystreams(total, seeds)
    assert np.array_equal(total, expected)


def test_subtracting_a_stream_undoes_adding_it() -> None:
    seed = bytes(range(32))
    total = np.arange(5000, dtype=np.uint32)
    add_signed_keystreams(total, [(seed, False)])
    assert not np.array_equal(total, np.arange(5000, dtype=np.uint32))
    add_signed_keystreams(total, [(seed, True)])
    assert np.array_equal(total, np.arange(5000, dtype=np.uint32))


def test_add_signed_keystreams_refuses_other_dtypes() -> None:
    with pytest.raises(ValueError, match="uint32"):
        add_signed_keystreams(np.zeros(4, dtype=np.int64), [(b"\x01" * 32, False)])


@pytest.mark.parametrize("bits", [19, 22, 32])
def test_mask_and_pack_is_quantize_plus_masks_mod_2_to_the_b(bits: int) -> None:
    """The fused pipeline equals its steps done one after another on whole vectors."""
    size = 2 * BLOCK + 77
    names = tuple(f"n{i}" for i in range(8))
    config = RoundConfig(1, names, 5, size, QuantizationSpec(0.5, 16), bits, bytes(32))
    values = np.random.default_rng(bits).uniform(-0.6, 0.6, size).astype(np.float32)  # some beyond the clip
    seeds = [(bytes([i + 7]) * 32, i % 2 == 0) for i in range(6)]
    rounding_seed = bytes([99]) * 32

    packed = mask_and_pack(values, config, seeds, KeystreamReader(rounding_seed))

    quantized = np.empty(size, dtype=np.uint32)
    quantizer = Quantizer(config.quantization, KeystreamReader(rounding_seed))
    for start in range(0, size, BLOCK):
        quantizer.block(values[start : start + BLOCK], quantized[start : start + BLOCK])
    expected = signed_sum(quantized, seeds) & np.uint32((1 << bits) - 1)
    assert len(packed) == (size * bits + 7) // 8
    assert np.array_equal(unpack(packed, bits, size), expected)
