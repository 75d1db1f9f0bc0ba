"""Federation PKI: issuance, verification failures that name the file, key file hygiene, CSR flow."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedsa_secure.crypto import pki
from fedsa_secure.errors import ConfigError, KeyMaterialError
from fedsa_secure.transport.tls import TlsFiles


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return pki.create_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return pki.create_ca(tmp_path_factory.mktemp("other-ca"), name="someone-elses-ca")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_issued_certificate_verifies_and_names_the_node(ca: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = pki.issue_certificate(*ca, "node-1", tmp_path, hosts=["127.0.0.1", "agg.example.org"])
    assert (cert.name, key.name) == ("node-1.pem", "node-1.key")
    assert pki.verify_pair(ca[0], cert, key) == "node-1"
    assert pki.common_name(cert.read_bytes()) == "node-1"

    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-1", "agg.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = parsed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # a node: TLS client only (the aggregator: server only)
    assert parsed.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_ca_certificate_is_a_ca(ca: tuple[Path, Path]) -> None:
    parsed = x509.load_pem_x509_certificate(ca[0].read_bytes())
    assert parsed.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert pki.common_name(ca[0].read_bytes()) == "fedsa-federation-ca"


def test_certificate_from_another_ca_is_rejected_naming_the_file(
    ca: tuple[Path, Path], other_ca: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = pki.issue_certificate(*other_ca, "intruder", tmp_path)
    with pytest.raises(KeyMaterialError, match="not issued by the CA") as info:
        pki.verify_pair(ca[0], cert, key)
    assert str(cert) in str(info.value) and str(ca[0]) in str(info.value)


def test_key_that_does_not_match_is_rejected_naming_the_key(ca: tuple[Path, Path], tmp_path: Path) -> None:
    cert, _ = pki.issue_certificate(*ca, "node-1", tmp_path / "a")
    _, wrong_key = pki.issue_certificate(*ca, "node-2", tmp_path / "b")
    with pytest.raises(KeyMaterialError, match="does not match") as info:
        pki.verify_pair(ca[0], cert, wrong_key)
    assert str(wrong_key) in str(info.value)


def test_private_keys_are_0600_and_certificates_readable(ca: tuple[Path, Path], tmp_path: Path) -> None:
    ca_cert, ca_key = pki.create_ca(tmp_path / "fresh-ca")
    cert, key = pki.issue_certificate(ca_cert, ca_key, "node-1", tmp_path / "node")
    csr, csr_key = pki.create_signing_request("node-2", tmp_path / "csr")
    for private in (ca_key, key, csr_key):
        assert _mode(private) == 0o600, private
    for public in (ca_cert, cert, csr):
        assert _mode(public) == 0o644, public
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_refuses_to_overwrite_a_key_unless_asked(ca: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = pki.issue_certificate(*ca, "node-1", tmp_path)
    original = key.read_bytes()
    with pytest.raises(KeyMaterialError, match="refusing to overwrite") as info:
        pki.issue_certificate(*ca, "node-1", tmp_path)
    assert str(key) in str(info.value)
    assert key.read_bytes() == original
    with pytest.raises(KeyMaterialError, match="refusing to overwrite"):
        pki.create_signing_request("node-1", tmp_path)
    with pytest.raises(KeyMaterialError, match="refusing to overwrite"):
        pki.create_ca(ca[0].parent)

    pki.issue_certificate(*ca, "node-1", tmp_path, overwrite=True)
    assert key.read_bytes() != original
    assert pki.verify_pair(ca[0], cert, key) == "node-1"
    assert _mode(key) == 0o600


def test_signing_request_flow_keeps_the_key_local(ca: tuple[Path, Path], tmp_path: Path) -> None:
    node_dir, ca_dir = tmp_path / "node", tmp_path / "at-ca"
    csr, key = pki.create_signing_request("node-7", node_dir)
    assert (csr.name, key.name) == ("node-7.csr", "node-7.key")
    assert b"PRIVATE KEY" not in csr.read_bytes()

    cert = pki.sign_request(*ca, csr, ca_dir, hosts=["10.0.0.7"])
    assert cert == ca_dir / "node-7.pem"
    assert not (ca_dir / "node-7.key").exists()
    assert pki.verify_pair(ca[0], cert, key) == "node-7"
    san = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]


def test_signing_with_a_mismatched_ca_key_is_refused(
    ca: tuple[Path, Path], other_ca: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(KeyMaterialError, match="does not match CA certificate") as info:
        pki.issue_certificate(ca[0], other_ca[1], "node-1", tmp_path)
    assert str(other_ca[1]) in str(info.value)
    assert not (tmp_path / "node-1.key").exists()


def test_signing_with_a_leaf_certificate_is_refused(ca: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = pki.issue_certificate(*ca, "node-1", tmp_path / "leaf")
    with pytest.raises(KeyMaterialError, match="is not a CA certificate"):
        pki.issue_certificate(cert, key, "node-2", tmp_path / "out")


def test_missing_and_garbage_files_are_named(ca: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = pki.issue_certificate(*ca, "node-1", tmp_path)
    missing = tmp_path / "nope.pem"
    with pytest.raises(KeyMaterialError, match="does not exist") as info:
        pki.verify_pair(ca[0], missing, key)
    assert str(missing) in str(info.value)

    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    with pytest.raises(KeyMaterialError, match="not a PEM private key") as info:
        pki.verify_pair(ca[0], cert, garbage)
    assert str(garbage) in str(info.value)

    with pytest.raises(KeyMaterialError, match="not a PEM CA certificate"):
        pki.verify_pair(garbage, cert, key)
    with pytest.raises(KeyMaterialError, match="not a PEM certificate signing request"):
        pki.sign_request(*ca, garbage, tmp_path)
    with pytest.raises(KeyMaterialError, match="not a PEM certificate"):
        pki.common_name(b"nonsense")


def test_key_content_never_appears_in_errors(ca: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = pki.issue_certificate(*ca, "node-1", tmp_path / "a")
    _, other_key = pki.issue_certificate(*ca, "node-2", tmp_path / "b")
    secret = other_key.read_text()
    body = "".join(secret.splitlines()[1:-1])
    with pytest.raises(KeyMaterialError) as info:
        pki.verify_pair(ca[0], cert, other_key)
    assert body[:40] not in str(info.value)
    assert info.value.__cause__ is None


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "-dash", "x" * 65, "sp ace"])
def test_unsafe_names_are_rejected(ca: tuple[Path, Path], tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid name"):
        pki.issue_certificate(*ca, name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tls_files_load_returns_pem_bytes(ca: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = pki.issue_certificate(*ca, "node-1", tmp_path)
    files = TlsFiles(ca[0], cert, key)
    assert files.load() == (ca[0].read_bytes(), cert.read_bytes(), key.read_bytes())
    assert files.common_name() == "node-1"


def test_tls_files_load_names_the_bad_file(
    ca: tuple[Path, Path], other_ca: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = pki.issue_certificate(*ca, "node-1", tmp_path)
    with pytest.raises(KeyMaterialError, match="does not exist") as info:
        TlsFiles(tmp_path / "missing-ca.pem", cert, key).load()
    assert "missing-ca.pem" in str(info.value)
    with pytest.raises(KeyMaterialError, match="not issued by the CA"):
        TlsFiles(other_ca[0], cert, key).load()
    with pytest.raises(KeyMaterialError, match="does not match"):
        TlsFiles(ca[0], cert, other_ca[1]).load()


def test_roles_give_one_usage_each_and_only_node_certificates_sign_for_secure_sums(tmp_path):
    from cryptography import x509

    from fedsa_secure.crypto import Signer, TrustAnchor
    from fedsa_secure.errors import IntegrityError, KeyMaterialError

    ca_cert, ca_key = pki.create_ca(tmp_path / "ca")
    node_cert, node_key = pki.issue_certificate(ca_cert, ca_key, "node-1", tmp_path / "n")
    agg_cert, agg_key = pki.issue_certificate(ca_cert, ca_key, "aggregator", tmp_path / "a", role=pki.AGGREGATOR)
    roles = {p: pki.role_of(x509.load_pem_x509_certificate(p.read_bytes())) for p in (node_cert, agg_cert)}
    assert roles == {node_cert: "node", agg_cert: "aggregator"}
    anchor = TrustAnchor(ca_cert.read_bytes())
    anchor.verify(node_cert.read_bytes(), "node-1", b"keys", Signer(node_key.read_bytes()).sign(b"keys"))
    with pytest.raises(IntegrityError, match="is not a node's"):
        anchor.verify(agg_cert.read_bytes(), "aggregator", b"keys", Signer(agg_key.read_bytes()).sign(b"keys"))
    with pytest.raises(KeyMaterialError, match="role must be one of node, aggregator"):
        pki.issue_certificate(ca_cert, ca_key, "node-2", tmp_path / "x", role="admin")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o606])
def test_a_private_key_readable_by_others_is_refused_with_the_fix(tmp_path, mode):
    from fedsa_secure.errors import KeyMaterialError
    from fedsa_secure.transport.tls import TlsFiles

    ca_cert, ca_key = pki.create_ca(tmp_path / "ca")
    cert, key = pki.issue_certificate(ca_cert, ca_key, "node-1", tmp_path / "n")
    assert TlsFiles(ca_cert, cert, key).load()[2] == key.read_bytes()  # issued 0600: accepted
    key.chmod(mode)
    with pytest.raises(KeyMaterialError, match=rf"{key} holds a secret but is readable by group or others .*chmod 600 {key}"):
        TlsFiles(ca_cert, cert, key).load()
