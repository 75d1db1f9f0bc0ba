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


BLOCK = 1 << 16  # values per step: the float64 scratch (512 KiB each) stays in L2 cache
_UNIT = 2.0**32  # fixed-point scale: one level = 2**32 units, the resolution of a rounding word


class Quantizer:
    """Quantizes consecutive blocks of a vector with shared scratch space and one rounding stream.

    Clip and scale x onto s in [0, 2**level_bits], then round up with probability frac(s): with
    S = s * 2**32 (exact: a power of two) and a fresh uniform word u, the result is
    floor((S + 2**32 - 1 - u) / 2**32) = floor(s) + [u < F], F = floor(frac(s) * 2**32), so the
    value rounds up with probability F / 2**32 and the bias is below 2**-32 of one level. For
    level_bits <= 20 every term stays below 2**53, so float64 holds the sum to within a unit
    (each further level bit doubles that, as with any float64 fixed point). It takes only fast
    float passes: no float64 -> uint64 conversion, no comparison, no boolean temporaries.
    The words come from `rounding`, normally `Randomness.word_reader()` (a fresh random AES
    key): a predictable source would leak the input through the rounding.

    Clipping is checked after the fact, on the integer results, in one cheap pass: an input
    inside [-clip, clip] gives a result in [0, L]; one slightly outside can also give 0 or L,
    which is exactly what clipping it first would give; anything else (a result outside
    [0, L], or a cast that overflows or meets NaN) sends the block down the slow path, which
    checks the input and clips before rounding with the same words.
    """

    def __init__(self, spec: QuantizationSpec, rounding: KeystreamReader) -> None:
        levels = 1 << spec.level_bits
        self._levels = levels
        # Every term is kept in levels, i.e. the units of the rule below divided by 2**32 (exact: a
        # power of two), so the rule's final division by 2**32 costs no pass.
        self._scale = float(levels) / (2.0 * spec.clip)
        self._half = levels / 2.0  # |x * scale| bound; also the offset onto [0, levels]
        # The offset, plus 2**32 - 1 of the rounding rule, minus the 2**31 that read_centred takes off u.
        self._bias = self._half + (_UNIT - 1.0 - 2.0**31) / _UNIT
        self._rounding = rounding
        self._scaled = np.empty(BLOCK)
        self._words = np.empty(BLOCK)
        # Results lie in [0, levels]: the fast signed conversion fits unless levels is 2**31.
        self._integer = np.dtype("<i4") if spec.level_bits < 31 else np.dtype("<u4")

    def block(self, part: np.ndarray, out: np.ndarray) -> None:
        """Quantize float32 or float64 `part` (at most BLOCK values) into uint32 `out` of the same size."""
        n = part.size
        scaled, words = self._scaled[:n], self._words[:n]
        np.multiply(self._rounding.read_centred(n), 1.0 / _UNIT, out=words)  # (u - 2**31) / 2**32, as float64
        np.multiply(part, self._scale, out=scaled, dtype=np.float64)  # float32 input: widen first, then scale
        try:
            self._round(scaled, words, out)
        except FloatingPointError:  # the cast overflowed or met NaN
            pass
        else:
            if out.max(initial=0) <= self._levels:
                return
        np.multiply(part, self._scale, out=scaled, dtype=np.float64)
        self._clip(part, scaled)
        self._round(scaled, words, out)

    def _round(self, scaled: np.ndarray, words: np.ndarray, out: np.ndarray) -> None:
        """out = floor(scaled - words + bias), all in levels; FloatingPointError if a value does not fit."""
        np.subtract(scaled, words, out=scaled)
        scaled += self._bias
        with np.errstate(invalid="raise"):
            np.copyto(out.view(self._integer), scaled, casting="unsafe")  # truncation = floor here

    def _clip(self, part: np.ndarray, scaled: np.ndarray) -> None:
        """Clip scaled values to [-half, half]; ProtocolError on NaN or infinite input."""
        if not np.isfinite(part).all():
            raise ProtocolError("the vector to aggregate contains NaN or infinite values")
        np.clip(scaled, -self._half, self._half, out=scaled)


def dequantize_sum(total: np.ndarray, spec: QuantizationSpec, count: int) -> np.ndarray:
    """Invert `quantize` for the (unwrapped) sum of `count` quantized vectors; float64."""
    return np.asarray(total, dtype=np.float64) * quantization_step(spec) - count * spec.clip
