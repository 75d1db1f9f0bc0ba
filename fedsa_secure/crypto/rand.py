"""Where protocol randomness comes from: the operating system's CSPRNG (os.urandom).

Protocol code takes a `Randomness` argument defaulting to `SYSTEM`, so that one explicit
injection point, `FixedRandomness`, can make a whole round reproducible for known-answer
vectors. Stochastic rounding needs a word per coordinate; it reads them from an AES keystream
under a fresh random key (`word_reader`): an order of magnitude faster than the kernel, and
as unpredictable.
"""

from __future__ import annotations

import os

from fedsa_secure.crypto.prg import SEED_SIZE, KeystreamReader, keystream_bytes


class Randomness:
    """The OS CSPRNG. Every key, seed, nonce and Shamir coefficient is drawn through one of these."""

    def bytes(self, n: int) -> bytes:
        """`n` fresh random bytes."""
        return os.urandom(n)

    def word_reader(self) -> KeystreamReader:
        """Uniform uint32 words, read block by block, from a fresh random 256-bit AES key."""
        return KeystreamReader(self.bytes(SEED_SIZE))


class FixedRandomness(Randomness):
    """TESTS ONLY: a reproducible stream (the PRG keystream of `seed`) for known-answer vectors.

    Anyone who knows the seed knows every key and mask it produced; production code never
    constructs one (SecAggClient and friends default to SYSTEM).
    """

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._used = 0

    def __repr__(self) -> str:
        return "FixedRandomness(<test seed>)"

    def bytes(self, n: int) -> bytes:
        """The next `n` bytes of the seed's keystream."""
        self._used += n
        return keystream_bytes(self._seed, self._used)[-n:] if n else b""


SYSTEM = Randomness()


def random_bytes(n: int) -> bytes:
    """`n` bytes from the OS CSPRNG."""
    return SYSTEM.bytes(n)
