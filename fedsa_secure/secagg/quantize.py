"""Fixed-point encoding of float vectors into Z_{2^b} with unbiased stochastic rounding.

x in [-clip, clip] maps affinely onto [0, L] with L = 2**level_bits, then rounds up with
probability equal to the fractional part (to 2**-32), so the expected result is the scaled x.
A sum of n such values lies in [0, n*L], so the ring must satisfy n*L < 2**b; that is
checked up front so the sum can never wrap silently.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from fedsa_secure.crypto import KeystreamReader
from fedsa_secure.errors import ProtocolError
from fedsa_secure.secagg.messages import QuantizationSpec, RoundConfig
from fedsa_secure.secagg.ring import MAX_MODULUS_BITS, check_bits


def quantization_step(spec: QuantizationSpec) -> float:
    """The float value of one quantization level: 2*clip / 2**level_bits."""
    return 2.0 * spec.clip / (1 << spec.level_bits)


def required_modulus_bits(n: int, level_bits: int) -> int:
    """Smallest b with n * 2**level_bits < 2**b; ProtocolError if it exceeds the 32-bit ring."""
    if n < 1 or level_bits < 1:
        raise ProtocolError(f"need n >= 1 and level_bits >= 1, got n={n}, level_bits={level_bits}")
    bits = (n << level_bits).bit_length()
    if bits > MAX_MODULUS_BITS:
        raise ProtocolError(
            f"{n} nodes at level_bits={level_bits} need a {bits}-bit modulus; the maximum is "
            f"{MAX_MODULUS_BITS}: lower level_bits to at most {MAX_MODULUS_BITS - n.bit_length()}"
        )
    return bits


def check_capacity(config: RoundConfig) -> None:
    """Refuse a round whose worst-case sum n * 2**level_bits would not fit below 2**modulus_bits."""
    spec = config.quantization
    if not (np.isfinite(spec.clip) and spec.clip > 0):
        raise ProtocolError(f"quantization clip must be a positive finite number, got {spec.clip}")
    check_bits(config.modulus_bits)
    n = len(config.participants)
    needed = required_modulus_bits(n, spec.level_bits)
    if needed > config.modulus_bits:
        raise ProtocolError(
            f"modulus too small: {n} nodes x 2**{spec.level_bits} levels = {n << spec.level_bits} "
            f">= 2**{config.modulus_bits}; use modulus_bits >= {needed} or fewer levels"
        )


BLOCK = 1 << 16  # values per step of masking: a block's uint32 values and mask rows stay in cache
_UNIT = 2.0**32  # fixed-point scale: one level = 2**32 units, the resolution of a rounding word


class Quantizer:
    """Quantizes consecutive blocks of a vector with one rounding stream.

    Clip and scale x onto s in [0, 2**level_bits], then round up with probability frac(s): with
    S = s * 2**32 (exact: a power of two) and a fresh uniform word u, the result is
    floor((S + 2**32 - 1 - u) / 2**32) = floor(s) + [u < F], F = floor(frac(s) * 2**32), so the
    value rounds up with probability F / 2**32 and the bias is below 2**-32 of one level. For
    level_bits <= 20 every term stays below 2**53, so float64 holds the sum to within a unit
    (each further level bit doubles that, as with any float64 fixed point). The words come from
    `rounding`, normally `Randomness.word_reader()` (a fresh random AES key): a predictable
    source would leak the input through the rounding.
    """

    def __init__(self, spec: QuantizationSpec, rounding: KeystreamReader) -> None:
        levels = 1 << spec.level_bits
        # Every term is kept in levels, i.e. the units of the rule above divided by 2**32 (exact: a
        # power of two), so the rule's final division by 2**32 is free.
        self._scale = float(levels) / (2.0 * spec.clip)
        self._half = levels / 2.0  # the clip bound of x * scale; also the offset onto [0, levels]
        # The offset, plus 2**32 - 1 of the rounding rule, minus the 2**31 that read_centred takes off u.
        self._bias = self._half + (_UNIT - 1.0 - 2.0**31) / _UNIT
        self._rounding = rounding

    def block(self, part: np.ndarray, out: np.ndarray) -> None:
        """Quantize float32 or float64 `part` (at most BLOCK values) into uint32 `out` of the same size."""
        words = self._rounding.read_centred(part.size)
        if not _round_into(part, self._scale, self._half, self._bias, words, out):
            raise ProtocolError("the vector to aggregate contains NaN or infinite values")


@numba.njit(cache=True)
def _round_into(
    part: np.ndarray, scale: float, half: float, bias: float, centred: np.ndarray, out: np.ndarray
) -> bool:
    """out = floor(clip(part * scale) - centred / 2**32 + bias), the rule above in levels; False
    (out then undefined) if `part` holds NaN or an infinity. Huge finite inputs clip to 0 or L."""
    finite = True
    for i in range(part.size):
        x = np.float64(part[i])
        finite &= math.isfinite(x)
        scaled = min(max(x * scale, -half), half)
        out[i] = np.uint32(np.int64(scaled - centred[i] * (1.0 / _UNIT) + bias))  # truncation = floor here
    return finite


def dequantize_sum(total: np.ndarray, spec: QuantizationSpec, count: int) -> np.ndarray:
    """Invert `quantize` for the (unwrapped) sum of `count` quantized vectors; float64."""
    return np.asarray(total, dtype=np.float64) * quantization_step(spec) - count * spec.clip
