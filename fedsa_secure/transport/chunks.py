"""Split envelopes into chunks below gRPC's message limit and join them back, with a size cap."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fedsa_secure.errors import ProtocolError
from fedsa_secure.proto import federation_pb2 as pb

CHUNK_BYTES = 1 << 20  # 1 MiB, well under the 4 MiB default gRPC limit
MAX_MESSAGE_BYTES = 1 << 30  # refuse to buffer more than 1 GiB for a single envelope (the aggregator sets less)
GRPC_MESSAGE_LIMIT = 4 * CHUNK_BYTES  # per gRPC message (one chunk plus framing)


def split(data: bytes, epoch: int = 0, sequence: int = 0) -> Iterator[pb.Chunk]:
    """Yield chunks of `data`; an empty payload still yields one chunk so the receiver sees a message."""
    view = memoryview(data)
    for start in range(0, max(len(data), 1), CHUNK_BYTES):
        yield pb.Chunk(data=bytes(view[start : start + CHUNK_BYTES]), epoch=epoch, sequence=sequence)


class Assembly:
    """A message arriving chunk by chunk: at most `limit` bytes in at most as many chunks as `split` makes of them, so
    a stream of tiny or empty chunks is refused as early as one of oversized ones."""

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.limit, self.most = limit, limit // CHUNK_BYTES + 2
        self.parts: list[bytes] = []
        self.size = 0
        self.first: pb.Chunk | None = None

    def add(self, chunk: pb.Chunk) -> None:
        if self.first is None:
            self.first = chunk
        self.size += len(chunk.data)
        if self.size > self.limit:
            raise ProtocolError(f"message exceeds the {self.limit / (1 << 20):g} MiB limit; send smaller tensors")
        if len(self.parts) + 1 > self.most:
            raise ProtocolError(f"message arrives in more than {self.most} chunks; chunks must be {CHUNK_BYTES >> 20} MiB")
        self.parts.append(chunk.data)

    def result(self) -> tuple[bytes, pb.Chunk | None]:
        """(data, first chunk or None if the stream was empty)."""
        return b"".join(self.parts), self.first


def join(chunks: Iterable[pb.Chunk], limit: int = MAX_MESSAGE_BYTES) -> tuple[bytes, pb.Chunk | None]:
    """Concatenate chunk payloads (an `Assembly`); returns (data, first chunk or None if the stream was empty)."""
    assembly = Assembly(limit)
    for chunk in chunks:
        assembly.add(chunk)
    return assembly.result()
