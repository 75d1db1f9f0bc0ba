"""Cryptographic building blocks; the only package that imports `cryptography`.

Everything here composes vetted primitives (X25519, HKDF-SHA256, AES-256-CTR,
ChaCha20-Poly1305, SHA-256); nothing implements a primitive itself.
"""

from fedsa_secure.crypto.aead import open_sealed, seal
from fedsa_secure.crypto.agreement import generate_keypair, public_from_private, shared_secret, shared_secrets
from fedsa_secure.crypto.hashing import keyed_digest, sha256
from fedsa_secure.crypto.kdf import (
    LABEL_GRAPH,
    LABEL_PAIRWISE_MASK,
    LABEL_SELF_MASK,
    LABEL_SHARE_SEALING,
    derive_key,
)
from fedsa_secure.crypto.prg import (
    KeystreamReader,
    KeystreamRows,
    expand_keystreams,
    keystream_bytes,
    keystream_words,
)
from fedsa_secure.crypto.rand import SYSTEM, FixedRandomness, Randomness, random_bytes
from fedsa_secure.crypto.signing import Signer, TrustAnchor

__all__ = [
    "FixedRandomness",
    "Randomness",
    "SYSTEM",
    "KeystreamReader",
    "KeystreamRows",
    "LABEL_GRAPH",
    "LABEL_PAIRWISE_MASK",
    "LABEL_SELF_MASK",
    "LABEL_SHARE_SEALING",
    "derive_key",
    "expand_keystreams",
    "generate_keypair",
    "keyed_digest",
    "keystream_bytes",
    "keystream_words",
    "open_sealed",
    "public_from_private",
    "random_bytes",
    "seal",
    "sha256",
    "shared_secret",
    "shared_secrets",
    "Signer",
    "TrustAnchor",
]
