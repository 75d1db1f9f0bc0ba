"""Signatures with TLS keys, verified against the federation CA."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsa_secure.crypto import pki
from fedsa_secure.crypto.signing import Signer, TrustAnchor
from fedsa_secure.errors import IntegrityError, KeyMaterialError


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("fed")
    ca_cert, ca_key = pki.create_ca(root / "ca")
    other_cert, other_key = pki.create_ca(root / "other", name="someone-elses-ca")
    alice_cert, alice_key = pki.issue_certificate(ca_cert, ca_key, "alice", root / "alice")
    mallory_cert, mallory_key = pki.issue_certificate(other_cert, other_key, "alice", root / "mallory")
    return {
        "ca": ca_cert.read_bytes(),
        "alice_cert": alice_cert.read_bytes(),
        "alice_key": Path(alice_key).read_bytes(),
        "mallory_cert": mallory_cert.read_bytes(),
        "mallory_key": Path(mallory_key).read_bytes(),
    }


def test_signature_verifies_for_the_named_signer(federation: dict[str, bytes]) -> None:
    signature = Signer(federation["alice_key"]).sign(b"advertised keys")
    TrustAnchor(federation["ca"]).verify(federation["alice_cert"], "alice", b"advertised keys", signature)


def test_modified_data_or_wrong_name_refused(federation: dict[str, bytes]) -> None:
    anchor = TrustAnchor(federation["ca"])
    signature = Signer(federation["alice_key"]).sign(b"advertised keys")
    with pytest.raises(IntegrityError, match="does not verify"):
        anchor.verify(federation["alice_cert"], "alice", b"substituted keys", signature)
    with pytest.raises(IntegrityError, match="belongs to 'alice'"):
        anchor.verify(federation["alice_cert"], "bob", b"advertised keys", signature)


def test_certificate_from_another_ca_refused(federation: dict[str, bytes]) -> None:
    signature = Signer(federation["mallory_key"]).sign(b"data")
    with pytest.raises(IntegrityError, match="not from the federation CA"):
        TrustAnchor(federation["ca"]).verify(federation["mallory_cert"], "alice", b"data", signature)


def test_signer_hides_its_key_and_refuses_garbage(federation: dict[str, bytes]) -> None:
    assert "PRIVATE" not in repr(Signer(federation["alice_key"]))
    with pytest.raises(KeyMaterialError):
        Signer(b"not a key")
