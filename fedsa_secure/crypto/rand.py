"""Randomness from the operating system's CSPRNG (os.urandom), directly or as a PRG key."""

from __future__ import annotations

import os

import numpy as np

from fedsa_secure.crypto.prg import SEED_SIZE, add_keystreams


def random_bytes(n: int) -> bytes:
    """`n` bytes from the OS CSPRNG."""
    return os.urandom(n)


def random_words(count: int) -> np.ndarray:
    """`count` independent uniform uint32 values: the keystream of a fresh random 256-bit key.

    Used for stochastic rounding, where a predictable generator would leak through the
    rounding; a fresh OS-random key makes the stream as unpredictable as os.urandom itself,
    and AES is an order of magnitude faster than reading that many bytes from the kernel.
    """
    words = np.zeros(count, dtype="<u4")
    add_keystreams(words, [(random_bytes(SEED_SIZE), False)])
    return words
