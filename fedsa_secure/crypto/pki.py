"""Federation PKI: a private CA issues ECDSA P-256 certificates whose common name is the node's identity.

Mutual TLS trusts exactly this CA, so whoever holds a certificate from it may join under its CN.
Private keys are written 0600, atomically, and never overwritten by accident; a node can
create its own key and a signing request so its key never leaves its machine.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsa_secure.errors import ConfigError, KeyMaterialError
from fedsa_secure.files import atomic_write_with

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CLOCK_SKEW = dt.timedelta(minutes=5)  # tolerate small clock differences between machines


NODE, AGGREGATOR = "node", "aggregator"
# A node dials out (TLS client) and signs its secure-aggregation keys; the aggregator serves. Giving each
# role one usage keeps an aggregator's certificate from passing as a participant of a secure sum.
ROLE_USAGES = {NODE: ExtendedKeyUsageOID.CLIENT_AUTH, AGGREGATOR: ExtendedKeyUsageOID.SERVER_AUTH}


def create_ca(
    out_dir: Path, name: str = "fedsa-federation-ca", days: int = 365, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Create a self-signed CA; returns (ca.pem, ca.key)."""
    _check_name(name)
    out_dir = Path(out_dir)
    cert_path, key_path = out_dir / "ca.pem", out_dir / "ca.key"
    _check_key_target(key_path, overwrite)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key, overwrite)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def issue_certificate(
    ca_cert: Path,
    ca_key: Path,
    name: str,
    out_dir: Path,
    hosts: Sequence[str] = (),
    days: int = 365,
    *,
    role: str = NODE,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Generate a key pair here and a certificate of `role` for it; returns (name.pem, name.key)."""
    _check_name(name)
    out_dir = Path(out_dir)
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    _check_key_target(key_path, overwrite)
    ca, signer = _load_ca(Path(ca_cert), Path(ca_key))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build_leaf(ca, signer, name, key.public_key(), hosts, days, role)
    _write_key(key_path, key, overwrite)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def create_signing_request(name: str, out_dir: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Generate a key pair and a CSR for it; returns (name.csr, name.key). Only the CSR goes to the CA."""
    _check_name(name)
    out_dir = Path(out_dir)
    csr_path, key_path = out_dir / f"{name}.csr", out_dir / f"{name}.key"
    _check_key_target(key_path, overwrite)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key, overwrite)
    _write_public(csr_path, csr.public_bytes(serialization.Encoding.PEM))
    return csr_path, key_path


def sign_request(
    ca_cert: Path, ca_key: Path, csr: Path, out_dir: Path, hosts: Sequence[str] = (), days: int = 365, *, role: str = NODE
) -> Path:
    """Issue a certificate of `role` for a CSR's key and CN; returns <CN>.pem. The CA, not the CSR, decides hosts and role."""
    csr = Path(csr)
    data = _read(csr, "certificate signing request")
    try:
        request = x509.load_pem_x509_csr(data)
    except ValueError:
        raise KeyMaterialError(f"{csr} is not a PEM certificate signing request") from None
    if not request.is_signature_valid:
        raise KeyMaterialError(f"{csr} has an invalid signature (corrupted or tampered); ask for a new request")
    public_key = request.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise KeyMaterialError(f"{csr} does not hold an ECDSA P-256 key; create it with create_signing_request")
    name = _subject_cn(request.subject, csr)
    _check_name(name)
    ca, signer = _load_ca(Path(ca_cert), Path(ca_key))
    cert = _build_leaf(ca, signer, name, public_key, hosts, days, role)
    cert_path = Path(out_dir) / f"{name}.pem"
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def verify_pair(ca_cert: Path, cert: Path, key: Path) -> str:
    """Check that `cert` is currently valid, issued by `ca_cert`, and matches `key`; returns its CN."""
    ca_cert, cert, key = Path(ca_cert), Path(cert), Path(key)
    ca = _load_cert(ca_cert, "CA certificate")
    leaf = _load_cert(cert, "certificate")
    private = _load_key(key)
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise KeyMaterialError(
            f"{cert} was not issued by the CA in {ca_cert}; use a certificate from the federation CA"
        ) from None
    now = dt.datetime.now(dt.UTC)
    if now < leaf.not_valid_before_utc - _CLOCK_SKEW:
        raise KeyMaterialError(f"{cert} is not valid until {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > leaf.not_valid_after_utc:
        raise KeyMaterialError(f"{cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d}; issue a new certificate")
    if private.public_key() != leaf.public_key():
        raise KeyMaterialError(f"private key {key} does not match certificate {cert}")
    return _subject_cn(leaf.subject, cert)


def role_of(cert: x509.Certificate) -> str | None:
    """The role whose (only) extended key usage the certificate carries; None for anything else."""
    try:
        usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None
    return next((role for role, usage in ROLE_USAGES.items() if usages == [usage]), None)


def common_name(cert_pem: bytes) -> str:
    """The subject CN of a PEM certificate: the identity of a node or of the aggregator."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise KeyMaterialError("data is not a PEM certificate") from None
    return _subject_cn(cert.subject, "certificate")


def _build_leaf(
    ca: x509.Certificate,
    signer: ec.EllipticCurvePrivateKey,
    name: str,
    public_key: ec.EllipticCurvePublicKey,
    hosts: Sequence[str],
    days: int,
    role: str,
) -> x509.Certificate:
    """End-entity certificate of one role: a node's authenticates TLS clients (and signs secure-aggregation
    messages), the aggregator's TLS servers; neither can act as the other."""
    if role not in ROLE_USAGES:
        raise KeyMaterialError(f"certificate role must be one of {', '.join(ROLE_USAGES)}, got {role!r}")
    return (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ROLE_USAGES[role]]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_san(name, hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )


def _san(name: str, hosts: Sequence[str]) -> list[x509.GeneralName]:
    """DNS:name plus one IP or DNS entry per host, without duplicates."""
    entries: list[x509.GeneralName] = [x509.DNSName(name)]
    for host in hosts:
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in entries:
            entries.append(entry)
    return entries


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    if days < 1:
        raise ConfigError(f"certificate validity must be at least 1 day, got days={days}")
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))


def _load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load the CA pair and check that it is a matching CA before signing anything with it."""
    cert = _load_cert(cert_path, "CA certificate")
    key = _load_key(key_path)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise KeyMaterialError(f"{cert_path} is not a CA certificate (BasicConstraints CA=false)")
    if key.public_key() != cert.public_key():
        raise KeyMaterialError(f"CA key {key_path} does not match CA certificate {cert_path}")
    return cert, key


def _load_cert(path: Path, what: str) -> x509.Certificate:
    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise KeyMaterialError(f"{path} is not a PEM {what}") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted ECDSA P-256 private key; errors name the file, never its content."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyMaterialError(
            f"private key {path} is password-protected; fedsa-secure expects an unencrypted key kept mode 0600"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyMaterialError(f"{path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyMaterialError(f"private key {path} is not an ECDSA P-256 key")
    return key


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise KeyMaterialError(f"{what} path {path} is a directory, expected a file") from None
    except OSError as exc:
        raise KeyMaterialError(f"cannot read {what} file {path}: {exc.strerror}") from None


def _subject_cn(subject: x509.Name, source: object) -> str:
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise KeyMaterialError(f"{source} must have exactly one subject common name (CN)")
    return names[0].value


def _check_name(name: str) -> None:
    """Names become file names and TLS identities, so keep them to a safe alphabet."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"invalid name {name!r}: use 1-64 characters from letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )


def _check_key_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise KeyMaterialError(f"refusing to overwrite existing private key {path}; pass overwrite=True to replace it")


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, overwrite: bool) -> None:
    _check_key_target(path, overwrite)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_atomic(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    atomic_write_with(path, lambda handle: handle.write(data), mode)
