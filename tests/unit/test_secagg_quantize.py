"""The Quantizer's compiled loop: out-of-range inputs come out exactly as if clipped first.

These tests pin the results against an exact reference that clips first and applies the
rounding rule to the stream's words, at the edges where an unclipped rounding would leak
past [0, L] or wrap around an integer type.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsa_secure.crypto import KeystreamReader, keystream_words
from fedsa_secure.errors import ProtocolError
from fedsa_secure.secagg.messages import QuantizationSpec
from fedsa_secure.secagg.quantize import BLOCK, Quantizer, quantization_step

SEED = bytes(range(32))
FRACTION_BITS = 5  # interior test values sit on a grid of 1/32 level: s * 2**32 is exact


def quantize_blocks(x: np.ndarray, spec: QuantizationSpec, seed: bytes = SEED) -> np.ndarray:
    """The whole vector through one Quantizer on the stream of `seed`, block by block, as masking does."""
    out = np.empty(x.size, dtype=np.uint32)
    quantizer = Quantizer(spec, KeystreamReader(seed))
    for start in range(0, x.size, BLOCK):
        quantizer.block(x[start : start + BLOCK], out[start : start + BLOCK])
    return out


def outside_values(spec: QuantizationSpec) -> np.ndarray:
    """Inputs beyond +-clip: by one ulp, by fractions of a level, by whole levels, far, huge,
    and where the unclipped level s would sit at the int32/uint32/int64 wrap-around points."""
    clip, step = spec.clip, quantization_step(spec)
    levels = 1 << spec.level_bits
    above = [
        np.nextafter(clip, np.inf), clip * (1 + 2.0**-40), clip + 0.25 * step, clip + 0.5 * step,
        clip + 0.999 * step, clip + step, clip + 1.5 * step, clip + 3 * step, 2 * clip, 10 * clip, 1e6, 1e15,
        1e300, np.finfo(np.float64).max,
    ]
    wrap_levels = [2**31 - 1, 2**31, 2**31 + 5, 2**32, 2**32 + 5, 2**32 + levels, 2**63 + 5, 2**64 + 5]
    above += [-clip + s * step for s in wrap_levels if s > levels]
    below = [-value for value in above] + [-clip - s * step for s in (2**31, 2**32 - 5, 2**32 + 3, 2**64)]
    return np.array(above + below)


def interior_grid(spec: QuantizationSpec, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` inputs in [-clip, clip] with s = j / 32 exactly; returns (x, j)."""
    j = rng.integers(0, (1 << spec.level_bits) * 2**FRACTION_BITS + 1, count)
    return -spec.clip + j * (quantization_step(spec) / 2**FRACTION_BITS), j


def reference(x: np.ndarray, j: np.ndarray, spec: QuantizationSpec, words: np.ndarray) -> np.ndarray:
    """Clip first, then q = floor(s) + [u < F], F = frac(s) * 2**32, with u the word at that index.

    A clipped input has s = 0 or s = L exactly, so F = 0 and q is 0 or L whatever the word;
    `j` gives s = j / 32 for the inputs inside [-clip, clip].
    """
    whole, frac = np.divmod(j, 2**FRACTION_BITS)
    inside = whole + (words.astype(np.int64) < frac * 2 ** (32 - FRACTION_BITS))
    q = np.where(x > spec.clip, 1 << spec.level_bits, np.where(x < -spec.clip, 0, inside))
    return q.astype(np.uint32)


@pytest.mark.parametrize(
    "spec",
    [QuantizationSpec(1.0, 16), QuantizationSpec(0.5, 16), QuantizationSpec(1.0, 1), QuantizationSpec(1.0, 8),
     QuantizationSpec(2.0, 20)],
)
def test_out_of_range_inputs_quantize_exactly_as_clipped_first(spec: QuantizationSpec) -> None:
    """Three blocks: inside values only; inside plus inputs one ulp (or 2**-40) beyond the
    clip; inside plus every far or partly-a-level outside input. Every result equals the exact
    clip-then-round reference with the same words, and equals quantizing np.clip(x)."""
    levels = 1 << spec.level_bits
    size = 3 * BLOCK - 123  # a short last block too
    rng = np.random.default_rng(spec.level_bits)
    x, j = interior_grid(spec, size, rng)
    barely = np.array([np.nextafter(spec.clip, np.inf), spec.clip * (1 + 2.0**-40)])
    barely = np.concatenate([barely, -barely] * 8)
    far = np.tile(outside_values(spec), 4)
    x[BLOCK + rng.choice(BLOCK, barely.size, replace=False)] = barely
    x[2 * BLOCK + rng.choice(size - 2 * BLOCK, far.size, replace=False)] = far
    outside = np.abs(x) > spec.clip
    assert outside.sum() == barely.size + far.size

    q = quantize_blocks(x, spec)

    expected = reference(x, j, spec, keystream_words(SEED, size))
    assert np.array_equal(q, expected)
    assert set(q[outside & (x > 0)]) == {levels} and set(q[outside & (x < 0)]) == {0}
    assert np.array_equal(q, quantize_blocks(np.clip(x, -spec.clip, spec.clip), spec))


@pytest.mark.parametrize("offset", [0.5, 1.0, 1.5])
def test_partly_a_level_outside_never_leaks_past_the_range(offset: float) -> None:
    """s = L + offset (or -offset) rounds to L+1 / -1 unclipped for about half (or all) of the
    words; every such value must still come out as L (or 0), in blocks of nothing else."""
    spec = QuantizationSpec(1.0, 12)
    step, levels = quantization_step(spec), 1 << spec.level_bits
    x = np.concatenate([np.full(1000, 1.0 + offset * step), np.full(1000, -1.0 - offset * step)])
    for start in (0, 1000):
        part = x[start : start + 1000]
        assert np.array_equal(quantize_blocks(part, spec), np.full(1000, levels if part[0] > 0 else 0, np.uint32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("position", [0, BLOCK - 1, BLOCK + 17])
@pytest.mark.parametrize("with_far_values", [False, True])
def test_nan_and_infinities_are_refused_wherever_they_are(bad: float, position: int, with_far_values: bool) -> None:
    """The code's rule for non-finite input: ProtocolError, never a clipped 0 or L, alone or
    among far values that are clipped."""
    spec = QuantizationSpec(1.0, 16)
    x, _ = interior_grid(spec, BLOCK + 100, np.random.default_rng(3))
    if with_far_values:
        x[position + 1 : position + 5] = [1e9, -1e9, 7.0, -7.0]
    x[position] = bad
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        quantize_blocks(x, spec)


@pytest.mark.parametrize(("clip", "level_bits"), [(0.5, 16), (0.3, 16), (0.1, 20), (0.3, 24)])
def test_a_float32_vector_quantizes_exactly_as_its_float64_copy(clip, level_bits):
    """Nodes hand their float32 updates to masking uncopied; the result must not depend on the dtype
    (a clip that is not a power of two makes the scale inexact in float32)."""
    spec = QuantizationSpec(clip, level_bits)
    x = np.random.default_rng(3).uniform(-1.2 * clip, 1.2 * clip, BLOCK + 1000).astype(np.float32)  # some beyond clip
    np.testing.assert_array_equal(quantize_blocks(x, spec), quantize_blocks(x.astype(np.float64), spec))
