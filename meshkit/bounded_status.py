"""A status small enough to reach the client: errors that quote a client's input are cut to fit gRPC's trailers.

A gRPC status travels in trailers: `grpc-message` (percent-encoded, so each non-ASCII byte takes three) and
`grpc-status-details-bin` (the `google.rpc.Status`, base64). A client refuses trailers over 8 KiB (grpc's
default soft limit, 16 KiB hard) and reports RESOURCE_EXHAUSTED "received metadata size exceeds …" instead of
the status, so an INVALID_ARGUMENT that quotes a 30 KB value (an unknown id, a bad code) reached the client as
the wrong code, and through the REST door as 429, which invites a retry. `bounded` keeps the code, cuts the
message to `MAX_MESSAGE_BYTES` and every text in the details to `MAX_TEXT_BYTES` (UTF-8, ending in "…"), and
keeps the details within `MAX_DETAILS_BYTES`: a `BadRequest` loses its last field violations first, any other
detail that does not fit is left out. Worst case the trailers stay under 7 KiB.
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

MAX_MESSAGE_BYTES = 1000
MAX_TEXT_BYTES = 256
MAX_DETAILS_BYTES = 3000
ELLIPSIS = "…"

# Every google.rpc detail type; importing this module puts them all in the default descriptor pool.
DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.BadRequest,
    error_details_pb2.RequestInfo,
    error_details_pb2.ResourceInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)
_DETAIL_TYPES: dict[str, type[Message]] = {kind.DESCRIPTOR.full_name: kind for kind in DETAIL_TYPES}


def cut(text: str, limit: int) -> str:
    """`text` in at most `limit` UTF-8 bytes, ending in "…" when it was longer."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - len(ELLIPSIS.encode())].decode("utf-8", "ignore") + ELLIPSIS


def cut_texts(message: Message, limit: int = MAX_TEXT_BYTES) -> None:
    """Cut every string in `message` (nested messages, repeated fields and maps too) to `limit` bytes."""
    for item, value in message.ListFields():
        entry = item.message_type
        if entry is not None and entry.GetOptions().map_entry:
            entries = dict(value)
            value.clear()
            for key, element in entries.items():
                key = cut(key, limit) if isinstance(key, str) else key
                if isinstance(element, Message):
                    cut_texts(element, limit)
                    value[key].CopyFrom(element)
                else:
                    value[key] = cut(element, limit) if isinstance(element, str) else element
        elif entry is not None:
            for element in value if item.is_repeated else [value]:
                cut_texts(element, limit)
        elif item.type == FieldDescriptor.TYPE_STRING:
            if item.is_repeated:
                texts = [cut(text, limit) for text in value]
                del value[:]
                value.extend(texts)
            else:
                setattr(message, item.name, cut(value, limit))


def bounded(status: status_pb2.Status) -> status_pb2.Status:
    """`status` with its message and details cut to fit the trailers (see the module docstring)."""
    if status.ByteSize() <= MAX_DETAILS_BYTES and len(status.message.encode("utf-8")) <= MAX_MESSAGE_BYTES // 3:
        return status  # small enough even when every byte of the message is percent-encoded
    details: list[any_pb2.Any] = []
    budget = MAX_DETAILS_BYTES
    for holder in status.details:
        kind = _DETAIL_TYPES.get(holder.TypeName())
        packed = any_pb2.Any()
        if kind is None:
            packed.CopyFrom(holder)
        else:
            detail = kind()
            holder.Unpack(detail)
            cut_texts(detail)
            if isinstance(detail, error_details_pb2.BadRequest):
                while detail.field_violations and detail.ByteSize() + 100 > budget:
                    del detail.field_violations[-1]
            packed.Pack(detail)
        if packed.ByteSize() + 4 <= budget:
            details.append(packed)
            budget -= packed.ByteSize() + 4
    return status_pb2.Status(code=status.code, message=cut(status.message, MAX_MESSAGE_BYTES), details=details)
