"""ECDSA P-256 / SHA-256 signatures with a party's TLS key, verified against the federation CA.

Secure aggregation signs its advertised keys and the survivor set with the same key the node
uses for mutual TLS, so peers can check them against certificates issued by the federation CA
(which every node already trusts) and the aggregator cannot substitute keys or lie about who
survived. Certificates travel as PEM bytes; `TrustAnchor` accepts one only if the CA issued it,
it is currently valid, it is a node's (not the aggregator's: the aggregator must not pass as a
participant of a secure sum) and its common name is the claimed sender.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsa_secure.crypto.pki import NODE, common_name, role_of
from fedsa_secure.errors import IntegrityError, KeyMaterialError, SignatureError

_CLOCK_SKEW = dt.timedelta(minutes=5)
_ALGORITHM = ec.ECDSA(hashes.SHA256())


class Signer:
    """Holds one party's ECDSA P-256 private key; its repr never shows the key."""

    def __init__(self, key_pem: bytes) -> None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise KeyMaterialError("signing key is not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise KeyMaterialError("signing key is not an ECDSA P-256 key")
        self._key = key

    def __repr__(self) -> str:
        return "Signer(<ECDSA P-256 key>)"

    def sign(self, data: bytes) -> bytes:
        """DER-encoded ECDSA signature of SHA-256(data)."""
        return self._key.sign(data, _ALGORITHM)


class TrustAnchor:
    """The federation CA certificate; verifies peers' certificates and their signatures."""

    def __init__(self, ca_pem: bytes) -> None:
        try:
            self._ca = x509.load_pem_x509_certificate(ca_pem)
        except ValueError:
            raise KeyMaterialError("CA certificate is not PEM") from None
        self._accepted: dict[bytes, str] = {}  # certificate PEM -> CN, once verified

    def verify(self, cert_pem: bytes, signer: str, data: bytes, signature: bytes) -> None:
        """IntegrityError unless `cert_pem` is a valid CA-issued certificate for `signer` that signed `data`."""
        public = self._public_key(cert_pem, signer)
        try:
            public.verify(signature, data, _ALGORITHM)
        except InvalidSignature:
            raise SignatureError(f"signature by {signer!r} does not verify") from None

    def _public_key(self, cert_pem: bytes, signer: str) -> ec.EllipticCurvePublicKey:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise IntegrityError(f"the certificate presented for {signer!r} is not PEM") from None
        if cert_pem not in self._accepted:
            try:
                cert.verify_directly_issued_by(self._ca)
            except (ValueError, TypeError, InvalidSignature):
                raise IntegrityError(f"the certificate presented for {signer!r} is not from the federation CA") from None
            now = dt.datetime.now(dt.UTC)
            if not cert.not_valid_before_utc - _CLOCK_SKEW <= now <= cert.not_valid_after_utc:
                raise IntegrityError(f"the certificate presented for {signer!r} is not currently valid")
            if role_of(cert) != NODE:
                raise IntegrityError(
                    f"the certificate presented for {signer!r} is not a node's (its only extended key usage must be "
                    "TLS client authentication): only nodes take part in secure sums"
                )
            self._accepted[cert_pem] = common_name(cert_pem)
        if self._accepted[cert_pem] != signer:
            raise IntegrityError(f"the certificate presented for {signer!r} belongs to {self._accepted[cert_pem]!r}")
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise IntegrityError(f"the certificate presented for {signer!r} does not hold an ECDSA key")
        return public
