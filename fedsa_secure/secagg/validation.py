"""Message checks shared by client and server."""

from __future__ import annotations

from collections.abc import Sequence

from fedsa_secure.crypto.agreement import KEY_SIZE
from fedsa_secure.errors import ProtocolError
from fedsa_secure.secagg.messages import AdvertiseKeys, RoundConfig


def check_advertisement(config: RoundConfig, ad: AdvertiseKeys) -> None:
    """An advertisement must come from a participant and carry two 32-byte public keys."""
    if ad.sender not in config.participants:
        raise ProtocolError(f"{ad.sender!r} is not a participant of round {config.round}")
    if len(ad.channel_public_key) != KEY_SIZE or len(ad.mask_public_key) != KEY_SIZE:
        raise ProtocolError(f"{ad.sender!r} advertised a public key that is not {KEY_SIZE} bytes")


def check_name_list(names: Sequence[str], what: str) -> frozenset[str]:
    """A list of node names without duplicates, as a set."""
    unique = frozenset(names)
    if len(unique) != len(names):
        raise ProtocolError(f"the {what} list contains duplicates")
    return unique
