"""Crypto layer: KDF format, key agreement, AEAD tamper detection, PRG and randomness."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedsa_secure.crypto import (
    LABEL_PAIRWISE_MASK,
    LABEL_SELF_MASK,
    LABEL_SHARE_SEALING,
    SYSTEM,
    FixedRandomness,
    KeystreamRows,
    derive_key,
    generate_keypair,
    keystream_bytes,
    keystream_words,
    open_sealed,
    public_from_private,
    seal,
    sha256,
    shared_secret,
)
from fedsa_secure.errors import IntegrityError


def _reference_hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256 with an empty salt, written from the RFC with stdlib hmac."""
    prk = hmac.new(bytes(32), secret, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def test_derive_key_matches_rfc5869_with_versioned_info() -> None:
    secret, context = b"\x0b" * 32, b"ctx"
    expected = _reference_hkdf(secret, b"fedsa-secure/v1/" + b"some-label" + b"\x00" + context, 48)
    assert derive_key(secret, "some-label", context, 48) == expected


def test_derive_key_separates_labels_and_contexts() -> None:
    secret = b"s" * 32
    keys = {
        derive_key(secret, LABEL_SELF_MASK, b"a"),
        derive_key(secret, LABEL_PAIRWISE_MASK, b"a"),
        derive_key(secret, LABEL_SHARE_SEALING, b"a"),
        derive_key(secret, LABEL_SELF_MASK, b"b"),
    }
    assert len(keys) == 4
    assert all(len(key) == 32 for key in keys)


def test_derive_key_rejects_nul_in_label() -> None:
    with pytest.raises(ValueError):
        derive_key(b"s" * 32, "a\x00b", b"")


def test_key_agreement_is_symmetric_and_matches_public_key() -> None:
    a_private, a_public = generate_keypair()
    b_private, b_public = generate_keypair()
    assert len(a_private) == len(a_public) == 32
    assert shared_secret(a_private, b_public) == shared_secret(b_private, a_public)
    assert public_from_private(a_private) == a_public
    c_private, c_public = generate_keypair()
    assert shared_secret(a_private, c_public) != shared_secret(a_private, b_public)


@pytest.mark.parametrize("bad_public", [bytes(32), (1).to_bytes(32, "little"), b"\x05" * 31])
def test_key_agreement_rejects_invalid_peer_keys(bad_public: bytes) -> None:
    private, _ = generate_keypair()
    with pytest.raises(IntegrityError):
        shared_secret(private, bad_public)


def test_aead_round_trip_and_fresh_nonces() -> None:
    key = b"k" * 32
    blob = seal(key, b"shares", b"ad")
    assert open_sealed(key, blob, b"ad") == b"shares"
    assert seal(key, b"shares", b"ad") != blob  # random nonce each time


@pytest.mark.parametrize("position", [0, 11, 12, 17, -1])  # nonce, ciphertext, tag
def test_aead_rejects_modified_blob(position: int) -> None:
    key = b"k" * 32
    blob = bytearray(seal(key, b"a secret share", b"ad"))
    blob[position] ^= 0x01
    with pytest.raises(IntegrityError):
        open_sealed(key, bytes(blob), b"ad")


def test_aead_rejects_wrong_associated_data_key_and_truncation() -> None:
    key = b"k" * 32
    blob = seal(key, b"payload", b"session|alice|bob")
    with pytest.raises(IntegrityError):
        open_sealed(key, blob, b"session|alice|carol")
    with pytest.raises(IntegrityError):
        open_sealed(b"j" * 32, blob, b"session|alice|bob")
    with pytest.raises(IntegrityError):
        open_sealed(key, blob[:20], b"session|alice|bob")


def test_prg_is_deterministic_prefix_consistent_and_seed_dependent() -> None:
    seed = b"\x01" * 32
    long = keystream_bytes(seed, 1000)
    assert keystream_bytes(seed, 1000) == long
    assert keystream_bytes(seed, 37) == long[:37]
    assert keystream_bytes(b"\x02" * 32, 1000) != long
    words = keystream_words(seed, 250)
    assert words.dtype == np.dtype("<u4") and words.shape == (250,)
    assert np.array_equal(words, np.frombuffer(long, dtype="<u4"))


def test_prg_output_bits_are_balanced() -> None:
    bits = np.unpackbits(np.frombuffer(keystream_bytes(b"\x03" * 32, 1 << 16), dtype=np.uint8))
    assert abs(bits.mean() - 0.5) < 0.005  # ~7 standard errors at n = 2**19


def test_prg_rejects_short_seed() -> None:
    with pytest.raises(ValueError):
        keystream_bytes(b"short", 16)


def test_random_words_are_uniform_and_fresh() -> None:
    reader = SYSTEM.word_reader()
    u = np.concatenate([reader.read(50_000).copy(), reader.read(50_000).copy()])
    assert u.dtype == np.dtype("<u4") and u.shape == (100_000,)
    assert abs(u.mean() / 2.0**32 - 0.5) < 0.005
    assert len(np.unique(u)) > 99_990  # the second read continues the stream, it does not repeat it
    assert not np.array_equal(SYSTEM.word_reader().read(1000), SYSTEM.word_reader().read(1000))


def test_fixed_randomness_is_one_reproducible_stream() -> None:
    first = FixedRandomness(bytes(32))
    assert first.bytes(5) + first.bytes(7) == FixedRandomness(bytes(32)).bytes(12) == keystream_bytes(bytes(32), 12)
    assert "seed" in repr(first) and bytes(32).hex() not in repr(first)


def test_keystream_rows_continue_each_stream_in_groups() -> None:
    """14 streams come out 12 + 2 rows per step, each row continuing its own stream."""
    seeds = [bytes([i]) * 32 for i in range(14)]
    rows = KeystreamRows(seeds)
    got: dict[int, list[np.ndarray]] = {i: [] for i in range(14)}
    for count in (100, 65_536, 3):
        groups = list((first, block.copy()) for first, block in rows.next(count))
        assert [(first, block.shape) for first, block in groups] == [(0, (12, count)), (12, (2, count))]
        for first, block in groups:
            for row, words in enumerate(block):
                got[first + row].append(words)
    for i, seed in enumerate(seeds):
        assert np.array_equal(np.concatenate(got[i]), keystream_words(seed, 100 + 65_536 + 3))


def test_keystream_rows_refuse_an_oversized_step() -> None:
    with pytest.raises(ValueError, match="at most 65536"):
        next(KeystreamRows([bytes(32)]).next(65_537))


def test_prg_is_aes256_ctr_from_counter_two() -> None:
    """The GCM-path stream equals plain AES-256-CTR with counter block 0^96 || 00000002."""
    seed = bytes(range(32))
    ctr = Cipher(algorithms.AES(seed), modes.CTR(bytes(12) + b"\x00\x00\x00\x02")).encryptor()
    assert keystream_bytes(seed, 4099) == ctr.update(bytes(4099))


def test_sha256_known_answer() -> None:
    assert sha256(b"abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
