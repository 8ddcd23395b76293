"""ModelInfer messages screened on the wire: refused before their payload is parsed, or
parsed to exactly what the protobuf parser gives.

Run: .venv/bin/pytest tests/serve/test_wire.py -q
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from servekit import random_pixels

from tl2edge._proto import grpc_service_pb2 as pb
from tl2edge._proto import grpc_service_pb2_grpc as pb_grpc
from tl2edge.serve import wire
from tl2edge.serve.errors import InvalidInput, ModelNotFound

MODEL = "tiny-int8"


def _served(name: str, version: str) -> object:
    if name != MODEL:
        raise ModelNotFound(f"model {name!r} is not served")
    return object()


def _typed(shape, values, *, field="uint_contents", datatype="UINT8", name=MODEL):
    request = pb.ModelInferRequest(model_name=name, model_version="1", id="req-7")
    request.inputs.add(name="image", datatype=datatype, shape=shape)
    getattr(request.inputs[0].contents, field).extend(values)
    return request


class _NoParse:
    """Stands in for the generated message class: parsing the payload fails the test."""

    class ModelInferRequest:
        @staticmethod
        def FromString(buf: bytes):
            raise AssertionError("the payload was parsed")


def test_header_is_read_without_the_payload():
    request = _typed([1, 8, 8, 3], [200] * 192)
    request.parameters["priority"].int64_param = 3
    request.outputs.add(name="classification")
    header = wire.read_header(request.SerializeToString())
    assert (header.model_name, header.model_version, header.id) == (MODEL, "1", "req-7")
    [tensor] = header.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("image", "UINT8", [1, 8, 8, 3])
    assert tensor.contents_bytes == request.inputs[0].contents.ByteSize()


def test_negative_and_unpacked_shapes_read_as_the_parser_reads_them():
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="image", datatype="UINT8", shape=[-1, 2**40, 3])
    buf = request.SerializeToString()
    assert wire.read_header(buf).inputs[0].shape == [-1, 2**40, 3]
    # the same shape as three unpacked int64 entries (field 3, wire type 0)
    tensor = b"\x0a\x05image" + b"".join(b"\x18" + _varint(v % 2**64) for v in (-1, 2**40, 3))
    unpacked = b"\x0a" + _varint(len(MODEL)) + MODEL.encode() + b"\x2a" + _varint(len(tensor))
    unpacked += tensor
    assert list(pb.ModelInferRequest.FromString(unpacked).inputs[0].shape) == [-1, 2**40, 3]
    assert wire.read_header(unpacked).inputs[0].shape == [-1, 2**40, 3]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_contents_longer_than_the_shape_allows_are_refused_unparsed(monkeypatch):
    monkeypatch.setattr(wire, "pb", _NoParse)
    buf = _typed([1, 8, 8, 3], [200] * 2_000_000).SerializeToString()
    refused = wire.screen_infer_request(buf, _served)
    assert isinstance(refused, wire.Refused)
    assert isinstance(refused.error, InvalidInput)
    assert (refused.model_name, refused.id) == (MODEL, "req-7")
    assert "more than 192 values" in str(refused.error)


def test_unknown_models_and_bad_shapes_are_refused_unparsed(monkeypatch):
    monkeypatch.setattr(wire, "pb", _NoParse)
    bogus = _typed([1, 8, 8, 3], [1] * 192, name="y" * 100_000).SerializeToString()
    assert isinstance(wire.screen_infer_request(bogus, _served).error, ModelNotFound)
    huge = _typed([2**58 + 1, 8, 8, 3], [1] * 192).SerializeToString()
    assert isinstance(wire.screen_infer_request(huge, _served).error, InvalidInput)
    deep = _typed([1] * 40, [1]).SerializeToString()
    assert isinstance(wire.screen_infer_request(deep, _served).error, InvalidInput)


@pytest.mark.parametrize(
    ("field", "datatype", "values"),
    [
        ("uint_contents", "UINT8", [0, 127, 128, 255] * 48),
        ("fp32_contents", "FP32", [0.5, -1.0, 3e38, 0.0] * 48),
        ("int64_contents", "INT64", [-(2**63), 2**63 - 1, -1, 0] * 48),  # 10-byte varints
        ("bytes_contents", "BYTES", [b"x" * 5000]),  # encoded images: any length
    ],
)
def test_requests_within_bounds_parse_to_what_the_parser_gives(field, datatype, values):
    shape = [1] if datatype == "BYTES" else [1, 8, 8, 3]
    request = _typed(shape, values, field=field, datatype=datatype)
    buf = request.SerializeToString()
    assert wire.screen_infer_request(buf, _served) == pb.ModelInferRequest.FromString(buf)


def test_malformed_messages_are_left_to_the_parser():
    buf = _typed([1, 8, 8, 3], [1] * 192).SerializeToString()
    with pytest.raises(Exception, match="Error parsing message"):
        wire.screen_infer_request(buf[:-7], _served)


def test_a_served_typed_bomb_is_invalid_argument_and_counted(server):
    with grpc.insecure_channel(server.address) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        with pytest.raises(grpc.RpcError) as caught:
            infer(_typed([1, 8, 8, 3], [200] * 1_000_000), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "more than 192 values" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            infer(_typed([1, 8, 8, 3], [1] * 192, name="nope"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        pixels = random_pixels(1, seed=3)
        good = _typed([1, 8, 8, 3], pixels.ravel().tolist())
        probs = np.frombuffer(infer(good, timeout=30).raw_output_contents[0], "<f4")
        assert probs.shape == (3,) and abs(float(probs.sum()) - 1) < 1e-5
        stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer
        bad = _typed([1, 8, 8, 3], [200] * 100_000)
        bad.id = "s-1"
        [reply] = list(stream(iter([bad]), timeout=30))
        assert "more than 192 values" in reply.error_message
        assert reply.infer_response.id == "s-1"
    counted = server.server.plane.metrics.requests.labels(
        "kserve.ModelInfer", MODEL, "INVALID_ARGUMENT"
    )._value.get()
    assert counted >= 1
