from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SelectRequest(_message.Message):
    __slots__ = ("round", "probe_images", "student_maps", "student")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PROBE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    STUDENT_MAPS_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    round: int
    probe_images: Tensor
    student_maps: Tensor
    student: StudentArchitecture
    def __init__(self, round: _Optional[int] = ..., probe_images: _Optional[_Union[Tensor, _Mapping]] = ..., student_maps: _Optional[_Union[Tensor, _Mapping]] = ..., student: _Optional[_Union[StudentArchitecture, _Mapping]] = ...) -> None: ...

class StudentArchitecture(_message.Message):
    __slots__ = ("name", "num_classes", "digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_classes: int
    digest: bytes
    def __init__(self, name: _Optional[str] = ..., num_classes: _Optional[int] = ..., digest: _Optional[bytes] = ...) -> None: ...

class OutputSelectRequest(_message.Message):
    __slots__ = ("round", "probe_images", "probe_labels", "num_classes", "student")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PROBE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    PROBE_LABELS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    round: int
    probe_images: Tensor
    probe_labels: Tensor
    num_classes: int
    student: StudentArchitecture
    def __init__(self, round: _Optional[int] = ..., probe_images: _Optional[_Union[Tensor, _Mapping]] = ..., probe_labels: _Optional[_Union[Tensor, _Mapping]] = ..., num_classes: _Optional[int] = ..., student: _Optional[_Union[StudentArchitecture, _Mapping]] = ...) -> None: ...

class SelectReply(_message.Message):
    __slots__ = ("round", "transferability")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TRANSFERABILITY_FIELD_NUMBER: _ClassVar[int]
    round: int
    transferability: float
    def __init__(self, round: _Optional[int] = ..., transferability: _Optional[float] = ...) -> None: ...

class QuantizationSpec(_message.Message):
    __slots__ = ("clip", "level_bits")
    CLIP_FIELD_NUMBER: _ClassVar[int]
    LEVEL_BITS_FIELD_NUMBER: _ClassVar[int]
    clip: float
    level_bits: int
    def __init__(self, clip: _Optional[float] = ..., level_bits: _Optional[int] = ...) -> None: ...

class RoundConfig(_message.Message):
    __slots__ = ("round", "participants", "threshold", "vector_length", "quantization", "modulus_bits", "nonce", "degree", "context")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    MODULUS_BITS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    round: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    threshold: int
    vector_length: int
    quantization: QuantizationSpec
    modulus_bits: int
    nonce: bytes
    degree: int
    context: bytes
    def __init__(self, round: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ..., threshold: _Optional[int] = ..., vector_length: _Optional[int] = ..., quantization: _Optional[_Union[QuantizationSpec, _Mapping]] = ..., modulus_bits: _Optional[int] = ..., nonce: _Optional[bytes] = ..., degree: _Optional[int] = ..., context: _Optional[bytes] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("round", "student_state", "secagg")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STUDENT_STATE_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    round: int
    student_state: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    secagg: RoundConfig
    def __init__(self, round: _Optional[int] = ..., student_state: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., secagg: _Optional[_Union[RoundConfig, _Mapping]] = ...) -> None: ...

class Decline(_message.Message):
    __slots__ = ("round", "reason")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round: int
    reason: str
    def __init__(self, round: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Abort(_message.Message):
    __slots__ = ("round", "reason")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round: int
    reason: str
    def __init__(self, round: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PrivacyStatus(_message.Message):
    __slots__ = ("round", "epsilon", "delta", "target_epsilon", "rounds_trained", "fits_next_round", "ledger_entries", "ledger_head")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TRAINED_FIELD_NUMBER: _ClassVar[int]
    FITS_NEXT_ROUND_FIELD_NUMBER: _ClassVar[int]
    LEDGER_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LEDGER_HEAD_FIELD_NUMBER: _ClassVar[int]
    round: int
    epsilon: float
    delta: float
    target_epsilon: float
    rounds_trained: int
    fits_next_round: bool
    ledger_entries: int
    ledger_head: str
    def __init__(self, round: _Optional[int] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., target_epsilon: _Optional[float] = ..., rounds_trained: _Optional[int] = ..., fits_next_round: _Optional[bool] = ..., ledger_entries: _Optional[int] = ..., ledger_head: _Optional[str] = ...) -> None: ...

class Join(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: PrivacyStatus
    def __init__(self, status: _Optional[_Union[PrivacyStatus, _Mapping]] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Wait(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdvertiseKeys(_message.Message):
    __slots__ = ("sender", "channel_public_key", "mask_public_key", "signature", "certificate")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    sender: str
    channel_public_key: bytes
    mask_public_key: bytes
    signature: bytes
    certificate: bytes
    def __init__(self, sender: _Optional[str] = ..., channel_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate: _Optional[bytes] = ...) -> None: ...

class Roster(_message.Message):
    __slots__ = ("advertisements",)
    ADVERTISEMENTS_FIELD_NUMBER: _ClassVar[int]
    advertisements: _containers.RepeatedCompositeFieldContainer[AdvertiseKeys]
    def __init__(self, advertisements: _Optional[_Iterable[_Union[AdvertiseKeys, _Mapping]]] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("sender", "recipient", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: str
    recipient: str
    ciphertext: bytes
    def __init__(self, sender: _Optional[str] = ..., recipient: _Optional[str] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ShareKeys(_message.Message):
    __slots__ = ("sender", "shares")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    sender: str
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, sender: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class ShareDelivery(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class MaskedInput(_message.Message):
    __slots__ = ("sender", "packed")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    sender: str
    packed: bytes
    def __init__(self, sender: _Optional[str] = ..., packed: _Optional[bytes] = ...) -> None: ...

class ConsistencyCheckRequest(_message.Message):
    __slots__ = ("survivors",)
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, survivors: _Optional[_Iterable[str]] = ...) -> None: ...

class ConsistencyCheckResponse(_message.Message):
    __slots__ = ("sender", "signature")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender: str
    signature: bytes
    def __init__(self, sender: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SurvivorSignature(_message.Message):
    __slots__ = ("signer", "signature")
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signer: str
    signature: bytes
    def __init__(self, signer: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("survivors", "dropped", "signatures")
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    signatures: _containers.RepeatedCompositeFieldContainer[SurvivorSignature]
    def __init__(self, survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ..., signatures: _Optional[_Iterable[_Union[SurvivorSignature, _Mapping]]] = ...) -> None: ...

class OwnedShare(_message.Message):
    __slots__ = ("owner", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    share: bytes
    def __init__(self, owner: _Optional[str] = ..., share: _Optional[bytes] = ...) -> None: ...

class UnmaskResponse(_message.Message):
    __slots__ = ("sender", "self_mask_shares", "mask_key_shares")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    sender: str
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[OwnedShare]
    mask_key_shares: _containers.RepeatedCompositeFieldContainer[OwnedShare]
    def __init__(self, sender: _Optional[str] = ..., self_mask_shares: _Optional[_Iterable[_Union[OwnedShare, _Mapping]]] = ..., mask_key_shares: _Optional[_Iterable[_Union[OwnedShare, _Mapping]]] = ...) -> None: ...

class ServerEnvelope(_message.Message):
    __slots__ = ("select_request", "train_request", "roster", "share_delivery", "unmask_request", "shutdown", "wait", "consistency_check_request", "output_select_request")
    SELECT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    TRAIN_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    SHARE_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    UNMASK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_CHECK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SELECT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    select_request: SelectRequest
    train_request: TrainRequest
    roster: Roster
    share_delivery: ShareDelivery
    unmask_request: UnmaskRequest
    shutdown: Shutdown
    wait: Wait
    consistency_check_request: ConsistencyCheckRequest
    output_select_request: OutputSelectRequest
    def __init__(self, select_request: _Optional[_Union[SelectRequest, _Mapping]] = ..., train_request: _Optional[_Union[TrainRequest, _Mapping]] = ..., roster: _Optional[_Union[Roster, _Mapping]] = ..., share_delivery: _Optional[_Union[ShareDelivery, _Mapping]] = ..., unmask_request: _Optional[_Union[UnmaskRequest, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ..., wait: _Optional[_Union[Wait, _Mapping]] = ..., consistency_check_request: _Optional[_Union[ConsistencyCheckRequest, _Mapping]] = ..., output_select_request: _Optional[_Union[OutputSelectRequest, _Mapping]] = ...) -> None: ...

class ClientEnvelope(_message.Message):
    __slots__ = ("select_reply", "decline", "privacy_status", "advertise_keys", "share_keys", "masked_input", "unmask_response", "consistency_check_response", "abort", "join", "round")
    SELECT_REPLY_FIELD_NUMBER: _ClassVar[int]
    DECLINE_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_STATUS_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_FIELD_NUMBER: _ClassVar[int]
    UNMASK_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_CHECK_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    select_reply: SelectReply
    decline: Decline
    privacy_status: PrivacyStatus
    advertise_keys: AdvertiseKeys
    share_keys: ShareKeys
    masked_input: MaskedInput
    unmask_response: UnmaskResponse
    consistency_check_response: ConsistencyCheckResponse
    abort: Abort
    join: Join
    round: int
    def __init__(self, select_reply: _Optional[_Union[SelectReply, _Mapping]] = ..., decline: _Optional[_Union[Decline, _Mapping]] = ..., privacy_status: _Optional[_Union[PrivacyStatus, _Mapping]] = ..., advertise_keys: _Optional[_Union[AdvertiseKeys, _Mapping]] = ..., share_keys: _Optional[_Union[ShareKeys, _Mapping]] = ..., masked_input: _Optional[_Union[MaskedInput, _Mapping]] = ..., unmask_response: _Optional[_Union[UnmaskResponse, _Mapping]] = ..., consistency_check_response: _Optional[_Union[ConsistencyCheckResponse, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ..., join: _Optional[_Union[Join, _Mapping]] = ..., round: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data", "epoch", "sequence")
    DATA_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    epoch: int
    sequence: int
    def __init__(self, data: _Optional[bytes] = ..., epoch: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("wait_seconds", "ack_epoch", "ack_sequence")
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACK_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ACK_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    wait_seconds: float
    ack_epoch: int
    ack_sequence: int
    def __init__(self, wait_seconds: _Optional[float] = ..., ack_epoch: _Optional[int] = ..., ack_sequence: _Optional[int] = ...) -> None: ...

class SendAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
