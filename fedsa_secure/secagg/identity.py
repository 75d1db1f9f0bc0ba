"""Signed advertisements and signed survivor sets (Bonawitz et al. 2017, malicious-server variant).

The aggregator relays every public key and tells each node who survived. Unsigned, it could
hand a node keys of its own in place of a peer's (and open that peer's shares), or show
different survivor sets to different nodes (and collect both the self-mask share and the
mask-key share of one honest node). So each node signs its keys and, in ConsistencyCheck,
the survivor set with its TLS key, and every node verifies every signature itself against
the federation CA; the aggregator only carries the signatures and certificates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from fedsa_secure.crypto import Signer, TrustAnchor
from fedsa_secure.errors import IntegrityError, ProtocolError, SignatureError
from fedsa_secure.secagg.messages import AdvertiseKeys, RoundConfig
from fedsa_secure.secagg.session import config_bytes, encode_fields

_ADVERTISE_DOMAIN = b"fedsa-secure/v1/secagg-advertise-keys"
_SURVIVORS_DOMAIN = b"fedsa-secure/v1/secagg-survivors"


@dataclass(frozen=True, repr=False)
class Credentials:
    """A node's signing key, its CA-issued certificate (PEM; CN = node name) and the federation CA."""

    signer: Signer
    certificate: bytes
    anchor: TrustAnchor

    @classmethod
    def from_pem(cls, ca: bytes, certificate: bytes, key: bytes) -> Credentials:
        """From the PEM files a node already uses for mutual TLS."""
        return cls(Signer(key), certificate, TrustAnchor(ca))

    def __repr__(self) -> str:
        return "Credentials(<signing key>)"


def advertisement_payload(config: RoundConfig, ad: AdvertiseKeys) -> bytes:
    """What a node signs in AdvertiseKeys: the whole round config as it received it, its name and both keys.

    A peer that was sent another config (another model, cohort, threshold or nonce) signed other
    bytes, so its keys fail to verify and the round stops before any masked input is sent.
    """
    return encode_fields(
        _ADVERTISE_DOMAIN,
        config_bytes(config),
        ad.sender.encode("utf-8"),
        ad.channel_public_key,
        ad.mask_public_key,
    )


def survivors_payload(session: bytes, survivors: Sequence[str]) -> bytes:
    """What a node signs in ConsistencyCheck: the session id and the sorted survivor set."""
    return encode_fields(_SURVIVORS_DOMAIN, session, encode_fields(*(s.encode("utf-8") for s in sorted(survivors))))


def sign_advertisement(credentials: Credentials, config: RoundConfig, ad: AdvertiseKeys) -> AdvertiseKeys:
    """`ad` with its signature and the node's certificate attached."""
    signature = credentials.signer.sign(advertisement_payload(config, ad))
    return replace(ad, signature=signature, certificate=credentials.certificate)


def verify_advertisement(anchor: TrustAnchor, config: RoundConfig, ad: AdvertiseKeys) -> None:
    """IntegrityError unless `ad` is signed for this round by the CA-certified holder of its sender name."""
    if not ad.signature or not ad.certificate:
        raise IntegrityError(f"the keys advertised for {ad.sender!r} are not signed")
    try:
        anchor.verify(ad.certificate, ad.sender, advertisement_payload(config, ad), ad.signature)
    except SignatureError as exc:
        raise SignatureError(
            f"{exc}: {ad.sender!r} signed its keys for another round configuration (another model, cohort, "
            "threshold or nonce than this node received), or its keys were substituted"
        ) from None


def check_survivor_signatures(
    anchor: TrustAnchor | None,
    roster: Mapping[str, AdvertiseKeys],
    session: bytes,
    survivors: Sequence[str],
    signatures: Sequence[tuple[str, bytes]],
    threshold: int,
) -> None:
    """Refuse unless at least `threshold` distinct survivors signed exactly this survivor set.

    Every forwarded signature must verify (an invalid one can only come from a lying
    aggregator, which verified them on receipt); with no anchor only the signers are counted.
    """
    signers = [signer for signer, _ in signatures]
    if len(set(signers)) != len(signers):
        raise ProtocolError("a node signed the survivor set twice in the forwarded signatures")
    strangers = set(signers) - set(survivors)
    if strangers:
        raise ProtocolError(f"survivor-set signatures from {sorted(strangers)}, who are not survivors")
    if len(signers) < threshold:
        raise ProtocolError(
            f"unmask refused: only {len(signers)} survivors signed the survivor set; threshold is {threshold}"
        )
    if anchor is None:
        return
    payload = survivors_payload(session, survivors)
    for signer, signature in signatures:
        anchor.verify(roster[signer].certificate, signer, payload, signature)
