"""Quantization: capacity checks, round trip within a step, unbiased stochastic rounding."""

from __future__ import annotations

import numpy as np
import pytest

from fedsa_secure.crypto import SYSTEM, KeystreamReader, keystream_words
from fedsa_secure.errors import ProtocolError
from fedsa_secure.secagg.messages import QuantizationSpec, RoundConfig
from fedsa_secure.secagg.quantize import (
    BLOCK,
    Quantizer,
    check_capacity,
    dequantize_sum,
    quantization_step,
    required_modulus_bits,
)


def quantize(x: np.ndarray, spec: QuantizationSpec) -> np.ndarray:
    """The whole vector through one Quantizer, block by block, as masking does."""
    values = np.asarray(x, dtype=np.float64)
    out = np.empty(values.size, dtype=np.uint32)
    quantizer = Quantizer(spec, SYSTEM.word_reader())
    for start in range(0, values.size, BLOCK):
        quantizer.block(values[start : start + BLOCK], out[start : start + BLOCK])
    return out


def _config(n: int, level_bits: int, modulus_bits: int) -> RoundConfig:
    names = tuple(f"n{i}" for i in range(n))
    return RoundConfig(0, names, n, 4, QuantizationSpec(1.0, level_bits), modulus_bits, bytes(32))


@pytest.mark.parametrize(("n", "level_bits", "bits"), [(1, 1, 2), (4, 2, 5), (5, 16, 19), (3, 2, 4), (8, 24, 28)])
def test_required_modulus_bits(n: int, level_bits: int, bits: int) -> None:
    assert required_modulus_bits(n, level_bits) == bits
    assert n * 2**level_bits < 2**bits <= 2 * n * 2**level_bits


def test_required_modulus_bits_refuses_more_than_32() -> None:
    with pytest.raises(ProtocolError, match="maximum is 32"):
        required_modulus_bits(2, 31)


def test_check_capacity_refuses_wrap_around() -> None:
    check_capacity(_config(4, 2, 5))  # 16 < 32
    with pytest.raises(ProtocolError, match="modulus too small"):
        check_capacity(_config(4, 2, 4))  # 16 >= 16
    with pytest.raises(ProtocolError):
        check_capacity(_config(4, 2, 33))


def test_quantization_step() -> None:
    assert quantization_step(QuantizationSpec(1.0, 8)) == 2.0 / 256
    assert quantization_step(QuantizationSpec(0.5, 1)) == 0.5


def test_round_trip_within_one_step_and_clipping() -> None:
    spec = QuantizationSpec(2.0, 12)
    x = np.concatenate([np.linspace(-2.0, 2.0, 10_001), [-5.0, 7.0]])
    q = quantize(x, spec)
    assert q.dtype == np.uint32
    assert q.min() >= 0 and q.max() <= 2**12
    back = dequantize_sum(q, spec, 1)
    clipped = np.clip(x, -2.0, 2.0)
    assert np.max(np.abs(back - clipped)) < quantization_step(spec)
    assert back[-2] == -2.0 and back[-1] == 2.0


def test_grid_values_quantize_exactly() -> None:
    spec = QuantizationSpec(1.0, 8)
    k = np.arange(0, 257)
    x = -1.0 + k * quantization_step(spec)
    assert np.array_equal(quantize(x, spec), k.astype(np.uint32))


def test_stochastic_rounding_is_unbiased() -> None:
    spec = QuantizationSpec(1.0, 2)  # step 0.5: 0.3 sits 60% of the way from 0.0 to 0.5
    samples = 40_000
    values = dequantize_sum(quantize(np.full(samples, 0.3), spec), spec, 1)
    assert set(np.unique(values)) == {0.0, 0.5}
    standard_error = 0.5 * np.sqrt(0.6 * 0.4 / samples)
    assert abs(values.mean() - 0.3) < 4 * standard_error


def test_dequantize_sum_of_several_vectors() -> None:
    spec = QuantizationSpec(1.0, 10)
    vectors = [np.linspace(-1, 1, 101) * s for s in (0.2, -0.7, 1.0)]
    total = sum(quantize(v, spec).astype(np.uint64) for v in vectors)
    assert np.max(np.abs(dequantize_sum(total, spec, 3) - sum(vectors))) < 3 * quantization_step(spec)


def test_quantize_refuses_non_finite() -> None:
    with pytest.raises(ProtocolError, match="NaN"):
        quantize(np.array([0.0, np.nan]), QuantizationSpec(1.0, 4))


def test_rounding_follows_the_exact_rule_with_the_reader_words() -> None:
    """q = floor(s) + [u < F], F = frac(s) * 2**32, u the rounding stream's words in order."""
    spec = QuantizationSpec(1.0, 16)
    k = np.random.default_rng(7).integers(-(2**20), 2**20, 5000)
    x = k / 2.0**20  # s = k/32 + 2**15 exactly, so F is known exactly
    seed = bytes(range(32))
    out = np.empty(x.size, dtype=np.uint32)
    Quantizer(spec, KeystreamReader(seed)).block(x, out)
    whole, frac = np.divmod(k, 32)  # floor and remainder of k / 32
    words = keystream_words(seed, x.size).astype(np.int64)
    expected = whole + 2**15 + (words < frac * 2**27)
    assert np.array_equal(out, expected)


def test_huge_finite_values_are_clipped_not_refused() -> None:
    q = quantize(np.array([-1e308, 1e308, 0.0]), QuantizationSpec(1.0, 8))  # x * scale overflows to +-inf
    assert list(q) == [0, 256, 128]


def test_quantize_refuses_infinite() -> None:
    with pytest.raises(ProtocolError, match="infinite"):
        quantize(np.array([0.0, np.inf]), QuantizationSpec(1.0, 4))
