"""Every RPC of inference.GRPCInferenceService against in-process ONNX Runtime.

Run: .venv/bin/pytest tests/serve/test_kserve.py -q
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from models import LABELS, reference
from servekit import png_bytes, random_pixels

from tl2edge._proto import grpc_service_pb2 as pb
from tl2edge._proto import grpc_service_pb2_grpc as pb_grpc
from tl2edge._proto import model_config_pb2 as mc
from tl2edge.serve.kserve import deserialize_bytes, serialize_bytes

MODEL = "tiny-int8"


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def raw_request(pixels: np.ndarray, datatype: str = "UINT8", **kw) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=kw.pop("model", MODEL), **kw)
    request.inputs.add(name="image", datatype=datatype, shape=list(pixels.shape))
    dtype = "<u1" if datatype == "UINT8" else "<f4"
    request.raw_input_contents.append(np.ascontiguousarray(pixels, dtype=dtype).tobytes())
    return request


def probs_of(response: pb.ModelInferResponse) -> np.ndarray:
    out = response.outputs[0]
    assert out.datatype == "FP32" and not out.HasField("contents")
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(tuple(out.shape))


def test_server_and_model_status(stub):
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="1")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="7")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "tl2edge" and "classification" in meta.extensions


def test_model_metadata_and_config(stub):
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
    assert (meta.name, list(meta.versions), meta.platform) == (MODEL, ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("image", "UINT8", [-1, 8, 8, 3])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("probs", "FP32", [-1, 3])
    ]
    config = stub.ModelConfig(pb.ModelConfigRequest(name=MODEL)).config
    assert config.max_batch_size == 8 and config.backend == "onnxruntime"
    assert config.input[0].data_type == mc.TYPE_UINT8 and list(config.input[0].dims) == [8, 8, 3]
    assert config.output[0].data_type == mc.TYPE_FP32 and list(config.output[0].dims) == [3]
    assert json.loads(config.parameters["labels"].string_value) == LABELS
    assert config.parameters["providers"].string_value == "CPUExecutionProvider"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelConfig(pb.ModelConfigRequest(name="nope"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND and MODEL in exc.value.details()


def test_infer_raw_uint8_equals_in_process_ort(stub, repo):
    pixels = random_pixels(5)
    response = stub.ModelInfer(raw_request(pixels, id="req-1"))
    assert (response.model_name, response.model_version, response.id) == (MODEL, "1", "req-1")
    np.testing.assert_allclose(probs_of(response), reference(repo / MODEL / "1", pixels), rtol=1e-6)


def test_infer_typed_contents_and_fp32(stub, repo):
    pixels = random_pixels(2, seed=3)
    expected = reference(repo / MODEL / "1", pixels)
    typed = pb.ModelInferRequest(model_name=MODEL)
    t = typed.inputs.add(name="image", datatype="UINT8", shape=list(pixels.shape))
    t.contents.uint_contents.extend(pixels.ravel().tolist())
    np.testing.assert_allclose(probs_of(stub.ModelInfer(typed)), expected, rtol=1e-6)
    as_float = raw_request(pixels.astype(np.float32), "FP32")
    np.testing.assert_allclose(probs_of(stub.ModelInfer(as_float)), expected, rtol=1e-6)
    typed_f = pb.ModelInferRequest(model_name=MODEL)
    t = typed_f.inputs.add(name="image", datatype="FP32", shape=list(pixels.shape))
    t.contents.fp32_contents.extend(pixels.ravel().astype(float).tolist())
    np.testing.assert_allclose(probs_of(stub.ModelInfer(typed_f)), expected, rtol=1e-6)


def test_infer_bytes_images_are_decoded_and_resized(stub, repo):
    big = random_pixels(2, size=20, seed=5)
    encoded = [png_bytes(p) for p in big]
    from tl2edge.images import decode_rgb

    expected = reference(repo / MODEL / "1", np.stack([decode_rgb(e, 8) for e in encoded]))
    raw = pb.ModelInferRequest(model_name=MODEL)
    raw.inputs.add(name="image", datatype="BYTES", shape=[2])
    raw.raw_input_contents.append(serialize_bytes(encoded))
    np.testing.assert_allclose(probs_of(stub.ModelInfer(raw)), expected, rtol=1e-6)
    typed = pb.ModelInferRequest(model_name=MODEL)
    t = typed.inputs.add(name="image", datatype="BYTES", shape=[2, 1])
    t.contents.bytes_contents.extend(encoded)
    np.testing.assert_allclose(probs_of(stub.ModelInfer(typed)), expected, rtol=1e-6)


def test_classification_output_parameter(stub, repo):
    pixels = random_pixels(3, seed=9)
    probs = reference(repo / MODEL / "1", pixels)
    request = raw_request(pixels)
    request.outputs.add(name="probs").parameters["classification"].int64_param = 2
    response = stub.ModelInfer(request)
    out = response.outputs[0]
    assert out.datatype == "BYTES" and list(out.shape) == [3, 2]
    items = [b.decode() for b in deserialize_bytes(response.raw_output_contents[0])]
    for row in range(3):
        best = np.argsort(-probs[row])[:2]
        for j, idx in enumerate(best):
            score, index, label = items[row * 2 + j].split(":")
            assert (int(index), label) == (idx, LABELS[idx])
            assert float(score) == pytest.approx(probs[row, idx], abs=1e-5)


def test_stream_infer_reports_errors_and_continues(stub, repo):
    pixels = random_pixels(3, seed=11)
    bad = raw_request(pixels[:1])
    bad.inputs[0].name = "wrong"
    requests = [raw_request(pixels[:1], id="a"), bad, raw_request(pixels[1:], id="c")]
    responses = list(stub.ModelStreamInfer(iter(requests)))
    assert len(responses) == 3
    assert responses[0].error_message == "" and responses[0].infer_response.id == "a"
    assert (
        responses[1].error_message.startswith("INVALID_ARGUMENT")
        and "'image'" in responses[1].error_message
    )
    assert responses[2].infer_response.id == "c"
    expected = reference(repo / MODEL / "1", pixels)
    np.testing.assert_allclose(probs_of(responses[0].infer_response), expected[:1], rtol=1e-6)
    np.testing.assert_allclose(probs_of(responses[2].infer_response), expected[1:], rtol=1e-6)


def test_statistics_count_requests_and_batches(stub):
    for n in (1, 2, 3):
        stub.ModelInfer(raw_request(random_pixels(n)))
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(raw_request(np.full((1, 8, 8, 3), np.nan, np.float32), "FP32"))
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL)).model_stats
    assert len(stats) == 1 and stats[0].version == "1"
    s = stats[0]
    assert s.inference_count == 6 and s.inference_stats.success.count == 3
    assert s.execution_count == 3  # the refused request never ran; warm-up is not counted
    assert s.inference_stats.fail.count == 1
    assert {b.batch_size for b in s.batch_stats} == {1, 2, 3}
    assert s.last_inference > 0
    everything = stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats
    assert [m.name for m in everything] == [MODEL]


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        (lambda r: setattr(r, "model_name", "nope"), "NOT_FOUND", "tiny-int8"),
        (lambda r: setattr(r, "model_version", "9"), "NOT_FOUND", "version 9"),
        (lambda r: setattr(r.inputs[0], "name", "img"), "INVALID_ARGUMENT", "'image'"),
        (lambda r: setattr(r.inputs[0], "datatype", "INT64"), "INVALID_ARGUMENT", "UINT8 or FP32"),
        (lambda r: r.inputs[0].shape.__setitem__(1, 9), "INVALID_ARGUMENT", "[N, 8, 8, 3]"),
        (
            lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 10),
            "INVALID_ARGUMENT",
            "needs 384",
        ),
        (lambda r: r.inputs[0].shape.__setitem__(0, 0), "INVALID_ARGUMENT", "needs 0"),
        (lambda r: r.outputs.add(name="logits"), "INVALID_ARGUMENT", "'probs'"),
    ],
)
def test_bad_requests_get_actionable_statuses(stub, mutate, code, words):
    request = raw_request(random_pixels(2))
    mutate(request)
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request)
    assert exc.value.code().name == code
    assert words in exc.value.details()
    assert stub.ModelInfer(raw_request(random_pixels(1))).model_name == MODEL  # still serving


def test_empty_batch_nan_and_corrupt_images(stub):
    empty = raw_request(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(empty)
    assert (
        exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "empty batch" in exc.value.details()
    )
    nan = random_pixels(1).astype(np.float32)
    nan[0, 0, 0, 0] = np.nan
    nan[0, 1, 0, 0] = np.inf
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(raw_request(nan, "FP32"))
    assert (
        exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "2 pixel values are NaN or Inf" in exc.value.details()
    )
    out_of_range = np.full((1, 8, 8, 3), 300.0, np.float32)
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(raw_request(out_of_range, "FP32"))
    assert "0..255" in exc.value.details()
    corrupt = pb.ModelInferRequest(model_name=MODEL)
    corrupt.inputs.add(name="image", datatype="BYTES", shape=[1])
    corrupt.raw_input_contents.append(serialize_bytes([b"\x89PNG not really"]))
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(corrupt)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image 0" in exc.value.details()
    truncated = pb.ModelInferRequest(model_name=MODEL)
    truncated.inputs.add(name="image", datatype="BYTES", shape=[1])
    truncated.raw_input_contents.append(b"\xff\x00\x00\x00abc")
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(truncated)
    assert "truncated" in exc.value.details()


def test_oversized_message_is_resource_exhausted(repo):
    from servekit import ServerThread

    from tl2edge.serve.server import ServeConfig

    with (
        ServerThread(repo, config=ServeConfig(max_message_mb=1)) as s,
        grpc.insecure_channel(
            s.address, options=[("grpc.max_send_message_length", 8 << 20)]
        ) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        big = pb.ModelInferRequest(model_name=MODEL)
        big.inputs.add(name="image", datatype="BYTES", shape=[1])
        big.raw_input_contents.append(serialize_bytes([b"x" * (2 << 20)]))
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(big)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.ModelInfer(raw_request(random_pixels(1))).model_name == MODEL
