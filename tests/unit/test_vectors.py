"""Known-answer vectors (tests/vectors/, written by scripts/make_vectors.py) still hold."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from fedsa_secure.crypto import FixedRandomness, derive_key, generate_keypair, keystream_bytes, keystream_words
from fedsa_secure.secagg import shamir
from fedsa_secure.secagg.sealing import open_shares, seal_shares

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def test_prg_stream() -> None:
    for vector in load("prg.json"):
        seed = bytes.fromhex(vector["seed"])
        assert keystream_bytes(seed, 64).hex() == vector["first_64_bytes"]
        assert keystream_words(seed, 65_540)[65_532:].tolist() == vector["words_65532_to_65539"]


def test_hkdf_labels() -> None:
    vectors = load("hkdf.json")
    assert len({v["key"] for v in vectors}) == len(vectors) == 4  # every label gives another key
    for v in vectors:
        assert derive_key(bytes.fromhex(v["secret"]), v["label"], bytes.fromhex(v["context"])).hex() == v["key"]


def test_aead_share_sealing() -> None:
    v = load("sealing.json")
    session, shares = bytes.fromhex(v["session"]), tuple(bytes.fromhex(s) for s in v["shares"])
    opened = open_shares(
        bytes.fromhex(v["recipient_private"]), bytes.fromhex(v["sender_public"]), session,
        v["sender"], v["recipient"], bytes.fromhex(v["ciphertext"]),
    )
    assert opened == shares
    randomness = FixedRandomness(bytes.fromhex(v["randomness_seed"]))
    sender_private, _ = generate_keypair(randomness)
    _, recipient_public = generate_keypair(randomness)
    resealed = seal_shares(
        sender_private, recipient_public, session, v["sender"], v["recipient"], shares,
        FixedRandomness(bytes.fromhex(v["nonce_seed"])),
    )
    assert resealed.hex() == v["ciphertext"]


def test_shamir_split_and_combine() -> None:
    v = load("shamir.json")
    secret, xs, t = bytes.fromhex(v["secret"]), v["xs"], v["threshold"]
    shares = [bytes.fromhex(s) for s in v["shares"]]
    assert shamir.split(secret, t, xs, FixedRandomness(bytes.fromhex(v["randomness_seed"]))) == shares
    for subset in itertools.combinations(zip(xs, shares), t):
        assert shamir.combine(list(subset), t) == secret


def test_complete_three_node_round() -> None:
    spec = importlib.util.spec_from_file_location("make_vectors", ROOT / "scripts" / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    expected = load("round.json")
    assert script.run_fixed_round() == expected
    inputs = script.round_inputs()
    step = 2.0 / 2**8
    assert np.max(np.abs(np.array(expected["sum"]) - sum(np.clip(v, -1, 1) for v in inputs.values()))) < 3 * step
