"""Domain dataclasses <-> protobuf envelopes; arrays travel as dtype + shape + little-endian bytes, never pickle.

Decoding treats its input as hostile: anything malformed raises ProtocolError saying what was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from fedsa_secure import messages as m
from fedsa_secure.checks import MAX_CLASSES
from fedsa_secure.errors import ProtocolError
from fedsa_secure.proto import federation_pb2 as pb
from fedsa_secure.secagg import messages as sa

# Plain numeric arrays only: bool, signed/unsigned int, float, complex. No objects, strings or records.
_ARRAY_KINDS = frozenset("biufc")


def encode_server(msg: m.ServerMessage) -> bytes:
    """Serialise an aggregator -> node message."""
    return _encode(pb.ServerEnvelope(), _SERVER_ENCODERS, msg)


def decode_server(data: bytes) -> m.ServerMessage:
    """Parse an aggregator -> node message."""
    message: m.ServerMessage = _decode(pb.ServerEnvelope(), _SERVER_DECODERS, data, "server")
    return message


def encode_client(msg: m.ClientMessage, round: int = 0) -> bytes:
    """Serialise a node -> aggregator message answering a request of `round` (0: none)."""
    return _encode(pb.ClientEnvelope(round=round), _CLIENT_ENCODERS, msg)


def decode_client(data: bytes) -> m.ClientMessage:
    """Parse a node -> aggregator message."""
    return decode_client_tagged(data)[1]


def decode_client_tagged(data: bytes) -> tuple[int, m.ClientMessage]:
    """Parse a node -> aggregator message with the round it answers."""
    envelope = pb.ClientEnvelope()
    message = _decode(envelope, _CLIENT_DECODERS, data, "client")
    return envelope.round, message


def tensor_to_proto(array: np.ndarray, out: pb.Tensor) -> None:
    """Fill `out` with the array's little-endian dtype string, shape and C-order bytes."""
    array = np.asarray(array)
    if array.dtype.kind not in _ARRAY_KINDS or array.dtype.fields is not None:
        raise TypeError(f"cannot send arrays of dtype {array.dtype}; only bool, int, uint, float and complex")
    little = array.dtype.newbyteorder("<")
    out.dtype = little.str
    out.shape[:] = array.shape
    out.data = np.ascontiguousarray(array, dtype=little).tobytes()


def tensor_from_proto(tensor: pb.Tensor, where: str) -> np.ndarray:
    """Rebuild a writable native-order array, checking dtype, shape and byte count against each other."""
    try:
        dtype = np.dtype(tensor.dtype)
    except (TypeError, ValueError):
        raise ProtocolError(f"{where}: unknown array dtype {tensor.dtype!r}") from None
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(f"{where}: array dtype {tensor.dtype!r} is not a plain numeric type")
    shape = tuple(tensor.shape)
    if any(dim < 0 for dim in shape):
        raise ProtocolError(f"{where}: negative dimension in array shape {shape}")
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(tensor.data):
        raise ProtocolError(
            f"{where}: array of shape {shape} and dtype {tensor.dtype} needs {expected} bytes, got {len(tensor.data)}"
        )
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _encode(envelope: Any, encoders: dict[type, tuple[str, Callable[[Any, Any], None]]], msg: object) -> bytes:
    try:
        field, fill = encoders[type(msg)]
    except KeyError:
        allowed = ", ".join(sorted(t.__name__ for t in encoders))
        raise TypeError(f"cannot send {type(msg).__name__} in a {type(envelope).__name__}; expected one of {allowed}") from None
    body = getattr(envelope, field)
    body.SetInParent()
    fill(body, msg)
    return bytes(envelope.SerializeToString())


def _decode(envelope: Any, decoders: dict[str, Callable[[Any], Any]], data: bytes, side: str) -> Any:
    try:
        envelope.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise ProtocolError(f"cannot parse {side} message ({len(data)} bytes): {exc}") from None
    field = envelope.WhichOneof("body")
    if field is None:
        raise ProtocolError(
            f"{side} message ({len(data)} bytes) carries no known message type; "
            "empty, corrupted, or sent by an incompatible fedsa-secure version"
        )
    return decoders[field](getattr(envelope, field))


def _required(parent: Any, field: str) -> Any:
    if not parent.HasField(field):
        raise ProtocolError(f"{type(parent).__name__}.{field} is missing")
    return getattr(parent, field)


# --- learning messages -------------------------------------------------------------------------


MAX_ARCHITECTURE_NAME = 200


def _put_architecture(out: pb.StudentArchitecture, student: m.StudentArchitecture) -> None:
    out.name, out.num_classes, out.digest = student.name, student.num_classes, student.digest


def _get_architecture(p: pb.StudentArchitecture, where: str) -> m.StudentArchitecture:
    if not 0 < len(p.name) <= MAX_ARCHITECTURE_NAME or len(p.digest) != 32 or not 2 <= p.num_classes <= MAX_CLASSES:
        raise ProtocolError(f"{where}: expected a name of 1 to {MAX_ARCHITECTURE_NAME} characters, 2 to {MAX_CLASSES} "
                            f"classes and a 32-byte digest; got {len(p.name)} characters, {p.num_classes} classes, "
                            f"{len(p.digest)} bytes")
    return m.StudentArchitecture(p.name, p.num_classes, p.digest)


def _put_select_request(out: pb.SelectRequest, msg: m.SelectRequest) -> None:
    out.round = msg.round
    tensor_to_proto(msg.probe_images, out.probe_images)
    tensor_to_proto(msg.student_maps, out.student_maps)
    _put_architecture(out.student, msg.student)


def _get_select_request(p: pb.SelectRequest) -> m.SelectRequest:
    return m.SelectRequest(
        round=p.round,
        probe_images=tensor_from_proto(_required(p, "probe_images"), "SelectRequest.probe_images"),
        student_maps=tensor_from_proto(_required(p, "student_maps"), "SelectRequest.student_maps"),
        student=_get_architecture(_required(p, "student"), "SelectRequest.student"),
    )


def _put_output_select_request(out: pb.OutputSelectRequest, msg: m.OutputSelectRequest) -> None:
    out.round = msg.round
    tensor_to_proto(msg.probe_images, out.probe_images)
    tensor_to_proto(msg.probe_labels, out.probe_labels)
    out.num_classes = msg.num_classes
    _put_architecture(out.student, msg.student)


def _get_output_select_request(p: pb.OutputSelectRequest) -> m.OutputSelectRequest:
    where = "OutputSelectRequest"
    images = tensor_from_proto(_required(p, "probe_images"), f"{where}.probe_images")
    labels = tensor_from_proto(_required(p, "probe_labels"), f"{where}.probe_labels")
    if images.ndim < 2 or images.dtype.kind != "f" or len(images) == 0:
        raise ProtocolError(f"{where}.probe_images must be a non-empty float array of records [N, ...], got {images.dtype} "
                            f"{images.shape}")
    if labels.dtype.kind not in "iu" or labels.shape != (len(images),):
        raise ProtocolError(
            f"{where}.probe_labels must be {len(images)} integer labels (one per image), got {labels.dtype} {labels.shape}"
        )
    if p.num_classes < 2 or labels.min() < 0 or labels.max() >= p.num_classes:
        raise ProtocolError(
            f"{where}: labels must lie in range(num_classes) with num_classes >= 2; "
            f"got num_classes {p.num_classes} and labels {labels.min()} to {labels.max()}"
        )
    return m.OutputSelectRequest(round=p.round, probe_images=images.astype(np.float32, copy=False),
                                 probe_labels=labels.astype(np.int64, copy=False), num_classes=p.num_classes,
                                 student=_get_architecture(_required(p, "student"), f"{where}.student"))


def _put_select_reply(out: pb.SelectReply, msg: m.SelectReply) -> None:
    out.round = msg.round
    out.transferability = float(msg.transferability)


def _get_select_reply(p: pb.SelectReply) -> m.SelectReply:
    return m.SelectReply(round=p.round, transferability=p.transferability)


def _put_train_request(out: pb.TrainRequest, msg: m.TrainRequest) -> None:
    out.round = msg.round
    for name, array in msg.student_state.items():
        entry = out.student_state.add(name=name)
        tensor_to_proto(array, entry.tensor)
    _put_round_config(out.secagg, msg.secagg)


def _get_train_request(p: pb.TrainRequest) -> m.TrainRequest:
    state: dict[str, np.ndarray] = {}
    for entry in p.student_state:
        if entry.name in state:
            raise ProtocolError(f"TrainRequest.student_state has parameter {entry.name!r} twice")
        where = f"TrainRequest.student_state[{entry.name!r}]"
        if not entry.HasField("tensor"):
            raise ProtocolError(f"{where} has no tensor")
        state[entry.name] = tensor_from_proto(entry.tensor, where)
    return m.TrainRequest(
        round=p.round,
        student_state=state,
        secagg=_get_round_config(_required(p, "secagg")),
    )


def _put_decline(out: pb.Decline, msg: m.Decline) -> None:
    out.round = msg.round
    out.reason = msg.reason


def _get_decline(p: pb.Decline) -> m.Decline:
    return m.Decline(round=p.round, reason=p.reason)


def _put_abort(out: pb.Abort, msg: m.Abort) -> None:
    out.round = msg.round
    out.reason = msg.reason


def _get_abort(p: pb.Abort) -> m.Abort:
    return m.Abort(round=p.round, reason=p.reason)


def _put_join(out: pb.Join, msg: m.Join) -> None:
    _put_privacy_status(out.status, msg.status)


def _get_join(p: pb.Join) -> m.Join:
    return m.Join(status=_get_privacy_status(_required(p, "status")))


def _put_privacy_status(out: pb.PrivacyStatus, msg: m.PrivacyStatus) -> None:
    out.round = msg.round
    out.epsilon = float(msg.epsilon)
    out.delta = float(msg.delta)
    out.target_epsilon = float(msg.target_epsilon)
    out.rounds_trained = msg.rounds_trained
    out.fits_next_round = msg.fits_next_round
    out.ledger_entries = msg.ledger_entries
    out.ledger_head = msg.ledger_head


def _get_privacy_status(p: pb.PrivacyStatus) -> m.PrivacyStatus:
    return m.PrivacyStatus(
        round=p.round,
        epsilon=p.epsilon,
        delta=p.delta,
        target_epsilon=p.target_epsilon,
        rounds_trained=p.rounds_trained,
        fits_next_round=p.fits_next_round,
        ledger_entries=p.ledger_entries,
        ledger_head=p.ledger_head,
    )


def _put_shutdown(out: pb.Shutdown, msg: m.Shutdown) -> None:
    out.reason = msg.reason


def _get_shutdown(p: pb.Shutdown) -> m.Shutdown:
    return m.Shutdown(reason=p.reason)


def _put_wait(out: pb.Wait, msg: m.Wait) -> None:
    """Wait has no fields; SetInParent in _encode already marks it present."""


def _get_wait(p: pb.Wait) -> m.Wait:
    return m.Wait()


# --- secure-aggregation messages ---------------------------------------------------------------


def _put_round_config(out: pb.RoundConfig, cfg: sa.RoundConfig) -> None:
    out.round = cfg.round
    out.participants[:] = cfg.participants
    out.threshold = cfg.threshold
    out.vector_length = cfg.vector_length
    out.quantization.clip = float(cfg.quantization.clip)
    out.quantization.level_bits = cfg.quantization.level_bits
    out.modulus_bits = cfg.modulus_bits
    out.nonce = cfg.nonce
    out.degree = cfg.degree
    out.context = cfg.context


def _get_round_config(p: pb.RoundConfig) -> sa.RoundConfig:
    q = _required(p, "quantization")
    return sa.RoundConfig(
        round=p.round,
        participants=tuple(p.participants),
        threshold=p.threshold,
        vector_length=p.vector_length,
        quantization=sa.QuantizationSpec(clip=q.clip, level_bits=q.level_bits),
        modulus_bits=p.modulus_bits,
        nonce=p.nonce,
        degree=p.degree,
        context=p.context,
    )


def _put_advertise_keys(out: pb.AdvertiseKeys, msg: sa.AdvertiseKeys) -> None:
    out.sender = msg.sender
    out.channel_public_key = msg.channel_public_key
    out.mask_public_key = msg.mask_public_key
    out.signature = msg.signature
    out.certificate = msg.certificate


def _get_advertise_keys(p: pb.AdvertiseKeys) -> sa.AdvertiseKeys:
    return sa.AdvertiseKeys(
        sender=p.sender,
        channel_public_key=p.channel_public_key,
        mask_public_key=p.mask_public_key,
        signature=p.signature,
        certificate=p.certificate,
    )


def _put_roster(out: pb.Roster, msg: sa.Roster) -> None:
    for ad in msg.advertisements:
        _put_advertise_keys(out.advertisements.add(), ad)


def _get_roster(p: pb.Roster) -> sa.Roster:
    return sa.Roster(advertisements=tuple(_get_advertise_keys(ad) for ad in p.advertisements))


def _put_shares(out: Any, shares: tuple[sa.EncryptedShare, ...]) -> None:
    for share in shares:
        out.add(sender=share.sender, recipient=share.recipient, ciphertext=share.ciphertext)


def _get_shares(shares: Any) -> tuple[sa.EncryptedShare, ...]:
    return tuple(sa.EncryptedShare(sender=s.sender, recipient=s.recipient, ciphertext=s.ciphertext) for s in shares)


def _put_share_keys(out: pb.ShareKeys, msg: sa.ShareKeys) -> None:
    out.sender = msg.sender
    _put_shares(out.shares, msg.shares)


def _get_share_keys(p: pb.ShareKeys) -> sa.ShareKeys:
    return sa.ShareKeys(sender=p.sender, shares=_get_shares(p.shares))


def _put_share_delivery(out: pb.ShareDelivery, msg: sa.ShareDelivery) -> None:
    _put_shares(out.shares, msg.shares)


def _get_share_delivery(p: pb.ShareDelivery) -> sa.ShareDelivery:
    return sa.ShareDelivery(shares=_get_shares(p.shares))


def _put_masked_input(out: pb.MaskedInput, msg: sa.MaskedInput) -> None:
    out.sender = msg.sender
    out.packed = msg.packed


def _get_masked_input(p: pb.MaskedInput) -> sa.MaskedInput:
    return sa.MaskedInput(sender=p.sender, packed=p.packed)


def _put_consistency_request(out: pb.ConsistencyCheckRequest, msg: sa.ConsistencyCheckRequest) -> None:
    out.survivors[:] = msg.survivors


def _get_consistency_request(p: pb.ConsistencyCheckRequest) -> sa.ConsistencyCheckRequest:
    return sa.ConsistencyCheckRequest(survivors=tuple(p.survivors))


def _put_consistency_response(out: pb.ConsistencyCheckResponse, msg: sa.ConsistencyCheckResponse) -> None:
    out.sender = msg.sender
    out.signature = msg.signature


def _get_consistency_response(p: pb.ConsistencyCheckResponse) -> sa.ConsistencyCheckResponse:
    return sa.ConsistencyCheckResponse(sender=p.sender, signature=p.signature)


def _put_unmask_request(out: pb.UnmaskRequest, msg: sa.UnmaskRequest) -> None:
    out.survivors[:] = msg.survivors
    out.dropped[:] = msg.dropped
    for signer, signature in msg.signatures:
        out.signatures.add(signer=signer, signature=signature)


def _get_unmask_request(p: pb.UnmaskRequest) -> sa.UnmaskRequest:
    return sa.UnmaskRequest(
        survivors=tuple(p.survivors),
        dropped=tuple(p.dropped),
        signatures=tuple((s.signer, s.signature) for s in p.signatures),
    )


def _put_unmask_response(out: pb.UnmaskResponse, msg: sa.UnmaskResponse) -> None:
    out.sender = msg.sender
    for owner, share in msg.self_mask_shares:
        out.self_mask_shares.add(owner=owner, share=share)
    for owner, share in msg.mask_key_shares:
        out.mask_key_shares.add(owner=owner, share=share)


def _get_unmask_response(p: pb.UnmaskResponse) -> sa.UnmaskResponse:
    return sa.UnmaskResponse(
        sender=p.sender,
        self_mask_shares=tuple((s.owner, s.share) for s in p.self_mask_shares),
        mask_key_shares=tuple((s.owner, s.share) for s in p.mask_key_shares),
    )


# Envelope oneof field, (encoder, decoder) per message type; the field names are those in federation.proto.
_SERVER_TABLE: dict[type, tuple[str, Callable[[Any, Any], None], Callable[[Any], Any]]] = {
    m.SelectRequest: ("select_request", _put_select_request, _get_select_request),
    m.OutputSelectRequest: ("output_select_request", _put_output_select_request, _get_output_select_request),
    m.TrainRequest: ("train_request", _put_train_request, _get_train_request),
    sa.Roster: ("roster", _put_roster, _get_roster),
    sa.ShareDelivery: ("share_delivery", _put_share_delivery, _get_share_delivery),
    sa.ConsistencyCheckRequest: ("consistency_check_request", _put_consistency_request, _get_consistency_request),
    sa.UnmaskRequest: ("unmask_request", _put_unmask_request, _get_unmask_request),
    m.Shutdown: ("shutdown", _put_shutdown, _get_shutdown),
    m.Wait: ("wait", _put_wait, _get_wait),
}
_CLIENT_TABLE: dict[type, tuple[str, Callable[[Any, Any], None], Callable[[Any], Any]]] = {
    m.SelectReply: ("select_reply", _put_select_reply, _get_select_reply),
    m.Decline: ("decline", _put_decline, _get_decline),
    m.Abort: ("abort", _put_abort, _get_abort),
    m.Join: ("join", _put_join, _get_join),
    m.PrivacyStatus: ("privacy_status", _put_privacy_status, _get_privacy_status),
    sa.AdvertiseKeys: ("advertise_keys", _put_advertise_keys, _get_advertise_keys),
    sa.ShareKeys: ("share_keys", _put_share_keys, _get_share_keys),
    sa.MaskedInput: ("masked_input", _put_masked_input, _get_masked_input),
    sa.ConsistencyCheckResponse: ("consistency_check_response", _put_consistency_response, _get_consistency_response),
    sa.UnmaskResponse: ("unmask_response", _put_unmask_response, _get_unmask_response),
}
_SERVER_ENCODERS = {t: (field, put) for t, (field, put, _) in _SERVER_TABLE.items()}
_SERVER_DECODERS = {field: get for field, _, get in _SERVER_TABLE.values()}
_CLIENT_ENCODERS = {t: (field, put) for t, (field, put, _) in _CLIENT_TABLE.items()}
_CLIENT_DECODERS = {field: get for field, _, get in _CLIENT_TABLE.values()}
