"""Screening of ModelInfer messages on the wire, before they are parsed.

gRPC hands a request to its deserializer on the event loop. Parsing a ModelInferRequest
whose typed `contents` hold millions of values costs tens of milliseconds there, during
which no other request moves, even when the request is refused right after (a shape of
[1, 32, 32, 3] with 2 M values). The screen reads only the message's top-level fields and
each input's name, datatype and shape (a few dozen bytes; the payloads are skipped by their
length prefix) and refuses, without parsing the payload:

- a model that is not served (NOT_FOUND, as after parsing);
- an input shape out of range (`limits.element_count`);
- typed contents longer than any encoding of the declared number of values could be.

Everything else is parsed as before and checked in full by serve/kserve.py. A message the
screen cannot read cheaply (malformed, or hundreds of top-level fields) is left to the
protobuf parser, so the screen never changes what a valid request means.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import grpc

from tl2edge._proto import grpc_service_pb2 as pb
from tl2edge.serve.errors import InvalidInput, ServeError
from tl2edge.serve.limits import MAX_RANK, element_count, shown

# Field numbers of inference.ModelInferRequest and its InferInputTensor (KServe v2 proto).
REQUEST_MODEL_NAME, REQUEST_MODEL_VERSION, REQUEST_ID, REQUEST_INPUTS = 1, 2, 3, 5
INPUT_NAME, INPUT_DATATYPE, INPUT_SHAPE, INPUT_CONTENTS = 1, 2, 3, 5
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

MAX_FIELDS = 256  # top-level fields read before the screen leaves a message to the parser
# The most bytes one value of typed contents can take on the wire: a 10-byte varint plus its
# tag when the field is not packed. Anything longer cannot be the declared number of values.
MAX_VALUE_BYTES = 11
SLACK_BYTES = 64


class _Unreadable(Exception):
    """The screen cannot read the message cheaply; the parser decides."""


@dataclass
class InputHeader:
    name: str = ""
    datatype: str = ""
    shape: list[int] = field(default_factory=list)
    contents_bytes: int = 0


@dataclass
class RequestHeader:
    model_name: str = ""
    model_version: str = ""
    id: str = ""
    inputs: list[InputHeader] = field(default_factory=list)


@dataclass(frozen=True)
class Refused:
    """A request refused on the wire; the servicer raises `error` where it would have
    raised it after parsing (inside admission, so it is counted like any other)."""

    model_name: str
    id: str
    error: ServeError


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Unreadable
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) of one message level."""
    pos, seen = start, 0
    while pos < end:
        seen += 1
        if seen > MAX_FIELDS:
            raise _Unreadable
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire_type, value, pos
        elif wire_type == LENGTH:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise _Unreadable
            yield number, wire_type, pos, pos + size
            pos += size
        elif wire_type in (FIXED64, FIXED32):
            pos += 8 if wire_type == FIXED64 else 4
        else:
            raise _Unreadable
    if pos != end:
        raise _Unreadable


def _text(buf: bytes, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8", errors="replace")


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _input(buf: bytes, start: int, end: int) -> InputHeader:
    header = InputHeader()
    for number, wire_type, a, b in _fields(buf, start, end):
        if number == INPUT_NAME and wire_type == LENGTH:
            header.name = _text(buf, a, b)
        elif number == INPUT_DATATYPE and wire_type == LENGTH:
            header.datatype = _text(buf, a, b)
        elif number == INPUT_SHAPE and wire_type == VARINT:
            header.shape.append(_int64(a))
        elif number == INPUT_SHAPE and wire_type == LENGTH:  # packed
            pos = a
            while pos < b:
                value, pos = _varint(buf, pos)
                header.shape.append(_int64(value))
                if len(header.shape) > MAX_RANK:
                    break
        elif number == INPUT_CONTENTS and wire_type == LENGTH:
            header.contents_bytes += b - a
    return header


def read_header(buf: bytes) -> RequestHeader:
    """The model and input headers of a serialized ModelInferRequest; payloads skipped."""
    header = RequestHeader()
    for number, wire_type, a, b in _fields(buf, 0, len(buf)):
        if wire_type != LENGTH:
            continue
        if number == REQUEST_MODEL_NAME:
            header.model_name = _text(buf, a, b)
        elif number == REQUEST_MODEL_VERSION:
            header.model_version = _text(buf, a, b)
        elif number == REQUEST_ID:
            header.id = _text(buf, a, b)
        elif number == REQUEST_INPUTS:
            header.inputs.append(_input(buf, a, b))
    return header


def check_header(header: RequestHeader, lookup: Callable[[str, str], object]) -> None:
    """Raise the error a request with this header is sure to get after parsing."""
    lookup(header.model_name, header.model_version)
    for tensor in header.inputs:
        count = element_count(tensor.shape)
        if tensor.datatype == "BYTES":
            continue  # encoded images: any size, bounded by --max-message-mb
        if tensor.contents_bytes > MAX_VALUE_BYTES * count + SLACK_BYTES:
            raise InvalidInput(
                f"input {shown(tensor.name)} has {tensor.contents_bytes:,} bytes of typed "
                f"contents, more than {count:,} values (shape {tensor.shape}) can take; "
                f"send as many values as the shape says"
            )


def screen_infer_request(
    buf: bytes, lookup: Callable[[str, str], object]
) -> pb.ModelInferRequest | Refused:
    """The parsed request, or `Refused` when its header alone settles the answer."""
    try:
        header = read_header(buf)
    except _Unreadable:
        return pb.ModelInferRequest.FromString(buf)
    try:
        check_header(header, lookup)
    except ServeError as exc:
        return Refused(header.model_name, header.id, exc)
    return pb.ModelInferRequest.FromString(buf)


SCREENED_METHODS = (
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelStreamInfer",
)


class ScreenInferRequests(grpc.aio.ServerInterceptor):
    """Gives ModelInfer and ModelStreamInfer `screen_infer_request` as their deserializer."""

    def __init__(self, lookup: Callable[[str, str], object]) -> None:
        self._lookup = lookup

    def _deserialize(self, buf: bytes) -> pb.ModelInferRequest | Refused:
        return screen_infer_request(buf, self._lookup)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method not in SCREENED_METHODS:
            return handler
        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(
                handler.stream_stream,
                request_deserializer=self._deserialize,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            handler.unary_unary,
            request_deserializer=self._deserialize,
            response_serializer=handler.response_serializer,
        )
