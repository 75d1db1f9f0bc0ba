"""The three PEM files a TLS endpoint needs, checked up front so a bad setup fails with the file's name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedsa_secure.crypto import pki
from fedsa_secure.errors import KeyMaterialError
from fedsa_secure.files import read_secret


@dataclass(frozen=True)
class TlsFiles:
    """Federation CA certificate, this endpoint's certificate, and its private key."""

    ca_cert: Path
    cert: Path
    key: Path

    def load(self) -> tuple[bytes, bytes, bytes]:
        """Return (ca, cert, key) PEM bytes after checking the cert matches the key and comes from the CA,
        and that the key file is private to its owner (as OpenSSH insists)."""
        pki.verify_pair(Path(self.ca_cert), Path(self.cert), Path(self.key))
        return _read(Path(self.ca_cert)), _read(Path(self.cert)), read_secret(Path(self.key))

    def common_name(self) -> str:
        """This endpoint's identity (its certificate's CN)."""
        return pki.verify_pair(Path(self.ca_cert), Path(self.cert), Path(self.key))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:  # verify_pair just read it, so this is a race with something changing the file
        raise KeyMaterialError(f"cannot read {path}: {exc.strerror}") from None
