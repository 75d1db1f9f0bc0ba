"""Write the known-answer vectors under tests/vectors/ (run from the repository root).

Usage: python scripts/make_vectors.py [OUT_DIR]   (default: tests/vectors)

The vectors pin down the bytes our protocol produces: the PRG stream, HKDF per label, AEAD
share sealing, Shamir split/combine and one complete 3-node round. Randomness comes from
`FixedRandomness` (the test-only injection point), so re-running this script reproduces the
files exactly; tests/unit/test_vectors.py recomputes everything and compares. Regenerate only
on a deliberate change of the wire format or derivations, and say so in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedsa_secure.crypto import (
    LABEL_GRAPH,
    LABEL_PAIRWISE_MASK,
    LABEL_SELF_MASK,
    LABEL_SHARE_SEALING,
    FixedRandomness,
    derive_key,
    generate_keypair,
    keystream_bytes,
    keystream_words,
)
from fedsa_secure.secagg import shamir
from fedsa_secure.secagg.client import SecAggClient
from fedsa_secure.secagg.messages import QuantizationSpec, RoundConfig
from fedsa_secure.secagg.sealing import seal_shares
from fedsa_secure.secagg.server import SecAggServer

LABELS = (LABEL_SELF_MASK, LABEL_PAIRWISE_MASK, LABEL_SHARE_SEALING, LABEL_GRAPH)


def seed(tag: str) -> bytes:
    """A fixed 32-byte seed named by `tag` (so the files say where each value comes from)."""
    return tag.encode("ascii").ljust(32, b".")


def prg_vectors() -> list[dict[str, Any]]:
    out = []
    for tag in ("prg-a", "prg-b"):
        words = keystream_words(seed(tag), 65_540)  # across the 65,536-word chunk boundary
        out.append({
            "seed": seed(tag).hex(),
            "first_64_bytes": keystream_bytes(seed(tag), 64).hex(),
            "words_65532_to_65539": [int(w) for w in words[65_532:]],
        })
    return out


def hkdf_vectors() -> list[dict[str, Any]]:
    secret, context = seed("hkdf-secret"), b"session-context"
    return [
        {"secret": secret.hex(), "label": label, "context": context.hex(), "key": derive_key(secret, label, context).hex()}
        for label in LABELS
    ]


def sealing_vectors() -> dict[str, Any]:
    randomness = FixedRandomness(seed("sealing"))
    sender_private, sender_public = generate_keypair(randomness)
    recipient_private, recipient_public = generate_keypair(randomness)
    shares = (bytes(range(66)), bytes(range(100, 166)))
    session = seed("session")
    ciphertext = seal_shares(sender_private, recipient_public, session, "alice", "bob", shares, FixedRandomness(seed("nonce")))
    return {
        "randomness_seed": seed("sealing").hex(), "nonce_seed": seed("nonce").hex(), "session": session.hex(),
        "sender": "alice", "recipient": "bob", "shares": [share.hex() for share in shares],
        "sender_public": sender_public.hex(), "recipient_private": recipient_private.hex(),
        "ciphertext": ciphertext.hex(),
    }


def shamir_vectors() -> dict[str, Any]:
    secret, xs, threshold = seed("shamir-secret"), [1, 2, 3, 4, 5], 3
    shares = shamir.split(secret, threshold, xs, FixedRandomness(seed("shamir")))
    return {
        "secret": secret.hex(), "threshold": threshold, "xs": xs, "randomness_seed": seed("shamir").hex(),
        "shares": [share.hex() for share in shares],
    }


ROUND_NAMES = ("alice", "bob", "carol")


def round_config() -> RoundConfig:
    return RoundConfig(
        round=1, participants=ROUND_NAMES, threshold=2, vector_length=16,
        quantization=QuantizationSpec(clip=1.0, level_bits=8), modulus_bits=10, nonce=seed("round-nonce"),
    )


def round_inputs() -> dict[str, np.ndarray]:
    return {name: np.linspace(-1.2, 1.2, 16) * (i + 1) / 3 for i, name in enumerate(ROUND_NAMES)}


def run_fixed_round() -> dict[str, Any]:
    """One complete round, every party on FixedRandomness: all messages are reproducible."""
    config = round_config()
    clients = {name: SecAggClient(name, config, randomness=FixedRandomness(seed(f"round-{name}"))) for name in ROUND_NAMES}
    server = SecAggServer(config)
    ads = {name: client.advertise() for name, client in clients.items()}
    for ad in ads.values():
        server.receive_advertise(ad)
    roster = server.roster()
    sealed = {name: client.share_keys(roster) for name, client in clients.items()}
    for msg in sealed.values():
        server.receive_shares(msg)
    deliveries = server.deliveries()
    inputs = round_inputs()
    masked = {name: client.masked_input(deliveries[name], inputs[name]) for name, client in clients.items()}
    for msg in masked.values():
        server.receive_masked(msg)
    check = server.consistency_request()
    for client in clients.values():
        server.receive_consistency(client.consistency_check(check))
    request = server.unmask_request()
    answers = {name: client.unmask(request) for name, client in clients.items()}
    for answer in answers.values():
        server.receive_unmask(answer)
    total = server.finish()
    return {
        "advertised": {n: [ad.channel_public_key.hex(), ad.mask_public_key.hex()] for n, ad in ads.items()},
        "share_ciphertexts": {n: [s.ciphertext.hex() for s in msg.shares] for n, msg in sealed.items()},
        "masked_inputs": {n: msg.packed.hex() for n, msg in masked.items()},
        "self_mask_shares": {n: [[o, s.hex()] for o, s in a.self_mask_shares] for n, a in answers.items()},
        "sum_quantized": [int(v) for v in server.sum_quantized],
        "sum": [float(v) for v in total],
    }


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "prg.json": prg_vectors(), "hkdf.json": hkdf_vectors(), "sealing.json": sealing_vectors(),
        "shamir.json": shamir_vectors(), "round.json": run_fixed_round(),
    }
    for name, data in files.items():
        (out / name).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tests/vectors"))
