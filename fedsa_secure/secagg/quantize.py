"""Fixed-point encoding of float vectors into Z_{2^b} with unbiased stochastic rounding.

x in [-clip, clip] maps affinely onto [0, L] with L = 2**level_bits, then rounds up with
probability equal to the fractional part (to 2**-32), so the expected result is the scaled x.
A sum of n such values lies in [0, n*L], so the ring must satisfy n*L < 2**b; that is
checked up front so the sum can never wrap silently.
"""

from __future__ import annotations

import numpy as np

from fedsa_secure.crypto import KeystreamReader
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


BLOCK = 1 << 16  # values per step: the float64 temporaries (512 KiB each) stay in L2 cache


class Quantizer:
    """Quantizes consecutive blocks of a vector with shared scratch space and one rounding stream.

    Clip, scale onto [0, 2**level_bits] and stochastically round. Scaling straight to
    s * 2**32 (exact: a power of two) and truncating to uint64 gives floor(s) in the high and
    the fraction f = frac(s) as F = floor(f * 2**32) in the low 32-bit half; the value rounds
    up iff a fresh uniform word u < F, i.e. with probability F / 2**32: the bias is below 2**-32
    of one level (s <= 2**16 has at least 36 fraction bits, so F is exact). The words come from
    `rounding`, normally `Randomness.word_reader()` (a fresh random AES key): a predictable
    source would leak the input through the rounding.
    """

    def __init__(self, spec: QuantizationSpec, rounding: KeystreamReader) -> None:
        levels = float(1 << spec.level_bits)
        self._scale = levels / (2.0 * spec.clip) * 2.0**32
        self._offset = levels / 2.0 * 2.0**32
        self._top = levels * 2.0**32
        self._rounding = rounding
        self._scaled = np.empty(BLOCK)
        self._fixed = np.empty(BLOCK, dtype="<u8")
        self._up = np.empty(BLOCK, dtype=bool)

    def block(self, part: np.ndarray, out: np.ndarray) -> None:
        """Quantize float64 `part` (at most BLOCK values) into uint32 `out` of the same size."""
        n = part.size
        scaled, fixed, up = self._scaled[:n], self._fixed[:n], self._up[:n]
        if not np.isfinite(part).all():
            raise ProtocolError("the vector to aggregate contains NaN or infinite values")
        np.multiply(part, self._scale, out=scaled)
        scaled += self._offset
        np.clip(scaled, 0.0, self._top, out=scaled)  # the clip to [-clip, clip], in scaled units
        fixed[...] = scaled  # truncation = floor for these non-negative values
        halves = fixed.view("<u4")  # little-endian: [low, high] per value
        out[...] = halves[1::2]
        np.less(self._rounding.read(n), halves[0::2], out=up)
        out += up


def dequantize_sum(total: np.ndarray, spec: QuantizationSpec, count: int) -> np.ndarray:
    """Invert `quantize` for the (unwrapped) sum of `count` quantized vectors; float64."""
    return np.asarray(total, dtype=np.float64) * quantization_step(spec) - count * spec.clip
