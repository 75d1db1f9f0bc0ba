"""Fixed-point encoding of float vectors into Z_{2^b} with unbiased stochastic rounding.

x in [-clip, clip] maps affinely onto [0, L] with L = 2**level_bits, then rounds up with
probability equal to the fractional part, so E[quantize(x)] is exactly the scaled x.
A sum of n such values lies in [0, n*L], so the ring must satisfy n*L < 2**b; that is
checked up front so the sum can never wrap silently.
"""

from __future__ import annotations

import numpy as np

from fedsa_secure.crypto import random_words
from fedsa_secure.errors import ProtocolError
from fedsa_secure.secagg.messages import QuantizationSpec, RoundConfig
from fedsa_secure.secagg.ring import MAX_MODULUS_BITS, RING_DTYPE, check_bits


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


def quantize(x: np.ndarray, spec: QuantizationSpec) -> np.ndarray:
    """Clip, scale onto [0, 2**level_bits] and stochastically round; uint32.

    A value with fractional part f rounds up iff a fresh uniform 32-bit word u satisfies
    u < f * 2**32 (exact in float64), i.e. with probability ceil(f * 2**32) / 2**32: the
    bias is below 2**-32 of one level, and zero whenever f is a multiple of 2**-32 (always
    the case for scaled values >= 2**20, whose float64 ulp is at least 2**-32).
    """
    scaled = np.array(x, dtype=np.float64)  # a private copy: every step below is in place
    if not np.all(np.isfinite(scaled)):
        raise ProtocolError("the vector to aggregate contains NaN or infinite values")
    levels = float(1 << spec.level_bits)
    np.clip(scaled, -spec.clip, spec.clip, out=scaled)
    scaled += spec.clip
    scaled *= levels / (2.0 * spec.clip)
    np.clip(scaled, 0.0, levels, out=scaled)  # guard against rounding just past either end
    floor = np.floor(scaled)
    scaled -= floor
    scaled *= 2.0**32
    rounded = floor.astype(RING_DTYPE)
    rounded += random_words(scaled.size).reshape(scaled.shape) < scaled
    return rounded


def dequantize_sum(total: np.ndarray, spec: QuantizationSpec, count: int) -> np.ndarray:
    """Invert `quantize` for the (unwrapped) sum of `count` quantized vectors; float64."""
    return np.asarray(total, dtype=np.float64) * quantization_step(spec) - count * spec.clip
