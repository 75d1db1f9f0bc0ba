"""Every domain message survives encode/decode exactly; malformed bytes raise ProtocolError, never crash."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from fedsa_secure import messages as m
from fedsa_secure.errors import ProtocolError
from fedsa_secure.proto import federation_pb2 as pb
from fedsa_secure.secagg import messages as sa
from fedsa_secure.transport.serde import decode_client, decode_server, encode_client, encode_server

RNG = np.random.default_rng(7)


def assert_same(a: object, b: object) -> None:
    """Deep equality where arrays must match dtype, shape and exact bytes."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)  # order matters: parameters are flattened in order
        for key in a:
            assert_same(a[key], b[key])
    elif hasattr(a, "__dataclass_fields__"):
        assert type(a) is type(b)
        for f in fields(a):  # type: ignore[arg-type]
            assert_same(getattr(a, f.name), getattr(b, f.name))
    else:
        assert type(a) is type(b) and a == b, (a, b)


def round_config() -> sa.RoundConfig:
    return sa.RoundConfig(
        round=3,
        participants=("node-1", "node-2", "node-3"),
        threshold=2,
        vector_length=1234,
        quantization=sa.QuantizationSpec(clip=0.75, level_bits=16),
        modulus_bits=32,
        nonce=bytes(range(32)),
        context=bytes(range(100, 132)),
    )


SHARES = (
    sa.EncryptedShare(sender="node-1", recipient="node-2", ciphertext=b"\x00\x01sealed"),
    sa.EncryptedShare(sender="node-1", recipient="node-3", ciphertext=b""),
)

STUDENT = m.StudentArchitecture("my_models:student", 10, bytes(range(32)))

SERVER_MESSAGES: list[m.ServerMessage] = [
    m.SelectRequest(
        round=1,
        probe_images=RNG.standard_normal((4, 3, 8, 8)).astype(np.float32),
        student_maps=RNG.random((4, 2, 2), dtype=np.float32),
        student=STUDENT,
    ),
    m.OutputSelectRequest(
        round=1,
        probe_images=RNG.random((6, 1, 14, 14), dtype=np.float32),
        probe_labels=np.array([0, 9, 3, 3, 1, 2], dtype=np.int64),
        num_classes=10,
        student=STUDENT,
    ),
    m.TrainRequest(
        round=2,
        student_state={
            "layer2.weight": RNG.standard_normal((5, 3)).astype(np.float32),
            "layer1.bias": np.array([1.5, -0.0, np.inf, np.nan], dtype=np.float32),
            "bn.num_batches_tracked": np.array(17, dtype=np.int64),
            "empty": np.zeros((0, 4), dtype=np.float32),
        },
        secagg=round_config(),
    ),
    sa.Roster(
        advertisements=(
            sa.AdvertiseKeys(sender="node-1", channel_public_key=b"c" * 32, mask_public_key=b"s" * 32),
            sa.AdvertiseKeys(sender="node-2", channel_public_key=b"C" * 32, mask_public_key=b"S" * 32),
        )
    ),
    sa.Roster(advertisements=()),
    sa.ShareDelivery(shares=SHARES),
    sa.ConsistencyCheckRequest(survivors=("node-1", "node-3")),
    sa.UnmaskRequest(
        survivors=("node-1", "node-3"), dropped=("node-2",), signatures=(("node-1", b"sig1"), ("node-3", b"\x00"))
    ),
    m.Shutdown(reason="run complete"),
    m.Wait(),
]

CLIENT_MESSAGES: list[m.ClientMessage] = [
    m.SelectReply(round=1, transferability=0.123456789012345),
    m.Decline(round=4, reason="privacy budget exhausted: epsilon 8.1 > 8.0"),
    m.Abort(round=5, reason="round 5 refused: 2 participants; node-1 takes part only in secure sums of at least 3"),
    m.Join(status=m.PrivacyStatus(round=0, epsilon=4.0, delta=1e-5, target_epsilon=8.0, rounds_trained=0,
                                  fits_next_round=True, ledger_entries=1, ledger_head="ab" * 32)),
    m.PrivacyStatus(round=4, epsilon=7.9, delta=1e-5, target_epsilon=8.0, rounds_trained=3, fits_next_round=False,
                    ledger_entries=3, ledger_head="0f" * 32),
    sa.AdvertiseKeys(sender="node-1", channel_public_key=bytes(32), mask_public_key=b"\xff" * 32),
    sa.AdvertiseKeys(
        sender="node-2", channel_public_key=b"c" * 32, mask_public_key=b"s" * 32,
        signature=b"\x30\x45sig", certificate=b"-----BEGIN CERTIFICATE-----\n",
    ),
    sa.ConsistencyCheckResponse(sender="node-1", signature=b"\x30\x44sig"),
    sa.ShareKeys(sender="node-1", shares=SHARES),
    sa.MaskedInput(sender="node-1", packed=RNG.bytes(1000)),
    sa.UnmaskResponse(
        sender="node-1",
        self_mask_shares=(("node-1", b"b1"), ("node-3", b"b3")),
        mask_key_shares=(("node-2", b"s2"),),
    ),
]


@pytest.mark.parametrize("msg", SERVER_MESSAGES, ids=lambda x: type(x).__name__)
def test_server_messages_round_trip(msg: m.ServerMessage) -> None:
    assert_same(msg, decode_server(encode_server(msg)))


@pytest.mark.parametrize("msg", CLIENT_MESSAGES, ids=lambda x: type(x).__name__)
def test_client_messages_round_trip(msg: m.ClientMessage) -> None:
    assert_same(msg, decode_client(encode_client(msg)))


def test_every_message_type_is_covered() -> None:
    assert {type(x) for x in SERVER_MESSAGES} == set(m.ServerMessage.__args__)  # type: ignore[attr-defined]
    assert {type(x) for x in CLIENT_MESSAGES} == set(m.ClientMessage.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.arange(-6, 6, dtype=np.int8).reshape(2, 6),
        np.array([0, 255, 7], dtype=np.uint8),
        np.array([2**63 - 1, -(2**63)], dtype=np.int64),
        np.array([2**64 - 1], dtype=np.uint64),
        np.array([True, False, True]),
        np.array([1 + 2j, -0.5j], dtype=np.complex64),
        np.array([65504.0, 6e-8], dtype=np.float16),
        np.array(3.25, dtype=np.float32),  # 0-d
        np.zeros((2, 0, 3), dtype=np.int32),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_arrays_keep_dtype_shape_and_bits(array: np.ndarray) -> None:
    msg = m.SelectRequest(round=0, probe_images=array, student_maps=array, student=STUDENT)
    back = decode_server(encode_server(msg))
    assert_same(array, back.probe_images)
    assert back.probe_images.flags.writeable


def test_big_endian_and_non_contiguous_arrays_arrive_native_with_same_values() -> None:
    big = np.arange(6, dtype=">f4").reshape(2, 3)
    transposed = np.arange(12, dtype=np.float32).reshape(3, 4).T
    back = decode_server(encode_server(m.SelectRequest(round=0, probe_images=big, student_maps=transposed, student=STUDENT)))
    assert back.probe_images.dtype == np.dtype(np.float32) and back.probe_images.dtype.isnative
    np.testing.assert_array_equal(back.probe_images, big)
    np.testing.assert_array_equal(back.student_maps, transposed)


def test_wire_format_is_little_endian_dtype_shape_bytes() -> None:
    data = encode_server(m.SelectRequest(round=0, probe_images=np.array([1.0], np.float32), student_maps=np.zeros(0), student=STUDENT))
    env = pb.ServerEnvelope.FromString(data)
    tensor = env.select_request.probe_images
    assert (tensor.dtype, list(tensor.shape), tensor.data) == ("<f4", [1], b"\x00\x00\x80?")


def test_non_numeric_arrays_are_refused_on_encode() -> None:
    with pytest.raises(TypeError, match="cannot send arrays of dtype object"):
        encode_server(m.SelectRequest(round=0, probe_images=np.array([{}], dtype=object), student_maps=np.zeros(1), student=STUDENT))


def test_wrong_direction_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cannot send SelectReply in a ServerEnvelope"):
        encode_server(m.SelectReply(round=0, transferability=0.0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot send Wait in a ClientEnvelope"):
        encode_client(m.Wait())  # type: ignore[arg-type]


def _select_with(tensor: pb.Tensor) -> bytes:
    env = pb.ServerEnvelope()
    env.select_request.probe_images.CopyFrom(tensor)
    env.select_request.student_maps.CopyFrom(pb.Tensor(dtype="<f4", shape=[0]))
    return env.SerializeToString()


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (pb.Tensor(dtype="|O", shape=[1], data=bytes(8)), "not a plain numeric type"),
        (pb.Tensor(dtype="<U4", shape=[1], data=bytes(16)), "not a plain numeric type"),
        (pb.Tensor(dtype="<f4,<i4", shape=[1], data=bytes(8)), "not a plain numeric type"),
        (pb.Tensor(dtype="no-such-type", shape=[1], data=bytes(4)), "unknown array dtype"),
        (pb.Tensor(dtype="<f4", shape=[3], data=bytes(8)), "needs 12 bytes, got 8"),
        (pb.Tensor(dtype="<f4", shape=[-1], data=bytes(4)), "negative dimension"),
    ],
)
def test_malformed_tensors_raise_protocol_error(tensor: pb.Tensor, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        decode_server(_select_with(tensor))
    assert "SelectRequest.probe_images" in str(info.value)


def test_missing_required_submessages_raise_protocol_error() -> None:
    env = pb.ServerEnvelope()
    env.select_request.round = 1
    with pytest.raises(ProtocolError, match="SelectRequest.probe_images is missing"):
        decode_server(env.SerializeToString())
    env = pb.ServerEnvelope()
    env.train_request.round = 1
    with pytest.raises(ProtocolError, match="TrainRequest.secagg is missing"):
        decode_server(env.SerializeToString())


def test_duplicate_state_entries_raise_protocol_error() -> None:
    msg = next(s for s in SERVER_MESSAGES if isinstance(s, m.TrainRequest))
    env = pb.ServerEnvelope.FromString(encode_server(msg))
    env.train_request.student_state.add().CopyFrom(env.train_request.student_state[0])
    with pytest.raises(ProtocolError, match="'layer2.weight' twice"):
        decode_server(env.SerializeToString())


def _output_select(images: np.ndarray, labels: np.ndarray, num_classes: int, student: tuple[str, bytes] = ("cnn", bytes(32))) -> bytes:
    """Encoded by hand: the encoder would send it, the decoder must refuse it."""
    env = pb.ServerEnvelope()
    env.output_select_request.round = 1
    env.output_select_request.num_classes = num_classes
    env.output_select_request.probe_images.CopyFrom(
        pb.Tensor(dtype=images.dtype.str, shape=list(images.shape), data=images.tobytes()))
    env.output_select_request.probe_labels.CopyFrom(
        pb.Tensor(dtype=labels.dtype.str, shape=list(labels.shape), data=labels.tobytes()))
    env.output_select_request.student.CopyFrom(pb.StudentArchitecture(name=student[0], num_classes=num_classes, digest=student[1]))
    return env.SerializeToString()


IMAGES = np.zeros((3, 1, 4, 4), np.float32)


@pytest.mark.parametrize(
    ("images", "labels", "num_classes", "message"),
    [
        (IMAGES, np.array([0, 1], np.int64), 10, "must be 3 integer labels"),
        (IMAGES, np.array([0.0, 1.0, 2.0]), 10, "must be 3 integer labels"),
        (IMAGES, np.array([0, 1, 10], np.int64), 10, "labels 0 to 10"),
        (IMAGES, np.array([0, -1, 2], np.int64), 10, "labels -1 to 2"),
        (IMAGES, np.array([0, 0, 0], np.int64), 1, "num_classes 1"),
        (np.zeros(3, np.float32), np.array([0, 1, 2], np.int64), 10, "float array of records \\[N, ...\\]"),
        (np.zeros((3, 1, 4, 4), np.int64), np.array([0, 1, 2], np.int64), 10, "float array"),
    ],
)
def test_bad_probe_sets_raise_protocol_error(images: np.ndarray, labels: np.ndarray, num_classes: int, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        decode_server(_output_select(images, labels, num_classes))
    assert "OutputSelectRequest" in str(info.value)


def test_good_probe_set_decodes_to_its_values() -> None:
    back = decode_server(_output_select(IMAGES + 0.5, np.array([2, 0, 1], np.int32), 3))
    assert isinstance(back, m.OutputSelectRequest)
    assert back.probe_labels.dtype == np.int64 and back.probe_labels.tolist() == [2, 0, 1]
    assert back.num_classes == 3 and float(back.probe_images.sum()) == 24.0
    assert back.student == m.StudentArchitecture("cnn", 3, bytes(32))
    tabular = decode_server(_output_select(np.ones((3, 5), np.float32), np.array([2, 0, 1]), 3))  # records need not be images
    assert isinstance(tabular, m.OutputSelectRequest) and tabular.probe_images.shape == (3, 5)


@pytest.mark.parametrize(("student", "message"), [(("", bytes(32)), "1 to 200 characters"), (("cnn", b"short"), "5 bytes"),
                                                  (("x" * 201, bytes(32)), "got 201 characters")])
def test_a_malformed_student_architecture_is_refused(student: tuple[str, bytes], message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        decode_server(_output_select(IMAGES, np.array([0, 1, 2]), 3, student))
    assert "OutputSelectRequest.student" in str(info.value)


@pytest.mark.parametrize("data", [b"", b"\xff\xff\xff", b"\x0a\x05abc"], ids=["empty", "garbage", "truncated"])
def test_garbage_bytes_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_server(data)
    with pytest.raises(ProtocolError):
        decode_client(data)


def test_unknown_body_from_newer_version_is_explained() -> None:
    unknown_field = b"\xa2\x06\x00"  # field 100, length-delimited, empty
    with pytest.raises(ProtocolError, match="incompatible fedsa-secure version"):
        decode_client(unknown_field)
