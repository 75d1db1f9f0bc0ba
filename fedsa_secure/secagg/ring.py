"""The ring Z_{2^b} that masked vectors live in, represented as uint32 numpy arrays.

b is capped at 32: uint32 addition and subtraction wrap modulo 2**32, and since 2**b divides
2**32, reducing with a bit mask at the end gives exact arithmetic modulo 2**b for free.
32 bits is ample: 1,000 nodes still get 2**22 quantization levels. Sums also stay exactly
representable in float64 when dequantized.
"""

from __future__ import annotations

import numpy as np

from fedsa_secure.errors import ProtocolError

MAX_MODULUS_BITS = 32
RING_DTYPE = np.uint32


def check_bits(bits: int) -> None:
    """Refuse a modulus width outside 1..MAX_MODULUS_BITS."""
    if not 1 <= bits <= MAX_MODULUS_BITS:
        raise ProtocolError(f"modulus_bits must be in 1..{MAX_MODULUS_BITS}, got {bits}")


def modulus_mask(bits: int) -> np.uint32:
    """2**bits - 1: AND with it reduces a uint32 modulo 2**bits."""
    check_bits(bits)
    return RING_DTYPE((1 << bits) - 1)
