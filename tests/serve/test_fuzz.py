"""Hypothesis fuzzing: hundreds of malformed requests, then a valid one still answered right.

Run: .venv/bin/pytest tests/serve/test_fuzz.py -q
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import reference
from servekit import random_pixels

from tl2edge._proto import classifier_pb2 as cpb
from tl2edge._proto import classifier_pb2_grpc as cpb_grpc
from tl2edge._proto import grpc_service_pb2 as pb
from tl2edge._proto import grpc_service_pb2_grpc as pb_grpc

# A bad request must get one of these, never INTERNAL/UNKNOWN (that would be a bug).
EXPECTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SEEN: list[str] = []

names = st.sampled_from(["image", "probs", "", "IMAGE", "image\x00"]) | st.text(max_size=8)
datatypes = st.sampled_from(["UINT8", "FP32", "BYTES", "INT8", "FP16", "", "uint8"])
shapes = st.lists(st.integers(-2, 12), max_size=5)
blobs = st.binary(max_size=600)


@st.composite
def kserve_requests(draw):  # type: ignore[no-untyped-def]
    r = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["tiny-int8", "", "nope"])),
        model_version=draw(st.sampled_from(["", "1", "2", "x", "-1"])),
    )
    for _ in range(draw(st.integers(0, 2))):
        t = r.inputs.add(name=draw(names), datatype=draw(datatypes), shape=draw(shapes))
        kind = draw(st.integers(0, 3))
        if kind == 1:
            t.contents.uint_contents.extend(draw(st.lists(st.integers(0, 400), max_size=200)))
        elif kind == 2:
            t.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=200)))
        elif kind == 3:
            t.contents.bytes_contents.extend(draw(st.lists(blobs, max_size=3)))
    for _ in range(draw(st.integers(0, 2))):
        r.raw_input_contents.append(draw(blobs))
    if draw(st.booleans()):
        o = r.outputs.add(name=draw(names))
        if draw(st.booleans()):
            o.parameters["classification"].int64_param = draw(st.integers(-3, 5))
    return r


@st.composite
def classify_requests(draw):  # type: ignore[no-untyped-def]
    r = cpb.ClassifyRequest(
        model=draw(st.sampled_from(["", "tiny-int8", "zz"])), top_k=draw(st.integers(0, 9))
    )
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            r.images.add(encoded=draw(blobs))
        elif draw(st.booleans()):
            h, w = draw(st.integers(0, 9)), draw(st.integers(0, 9))
            r.images.add(pixels=cpb.RawImage(data=draw(blobs), height=h, width=w))
        else:
            r.images.add()
    return r


def _call(fn, request) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(request, timeout=20)
    except grpc.RpcError as exc:
        assert exc.code() in EXPECTED, f"{exc.code()}: {exc.details()} for {request}"
        SEEN.append(exc.code().name)


@pytest.mark.slow
def test_fuzzed_requests_never_break_the_server(server, repo):
    with grpc.insecure_channel(server.address) as channel:
        kserve = pb_grpc.GRPCInferenceServiceStub(channel)
        classifier = cpb_grpc.ClassifierStub(channel)

        @settings(
            max_examples=350, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(kserve_requests())
        def fuzz_kserve(request):  # type: ignore[no-untyped-def]
            _call(kserve.ModelInfer, request)

        @settings(
            max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(classify_requests())
        def fuzz_classify(request):  # type: ignore[no-untyped-def]
            _call(classifier.Classify, request)

        SEEN.clear()
        fuzz_kserve()
        fuzz_classify()
        assert len(SEEN) >= 500, f"only {len(SEEN)} requests were malformed"
        pixels = random_pixels(2, seed=99)
        request = pb.ModelInferRequest(model_name="tiny-int8")
        request.inputs.add(name="image", datatype="UINT8", shape=[2, 8, 8, 3])
        request.raw_input_contents.append(pixels.tobytes())
        response = kserve.ModelInfer(request, timeout=20)
        probs = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 3)
        np.testing.assert_allclose(probs, reference(repo / "tiny-int8" / "1", pixels), rtol=1e-6)
        assert server.server.plane.inflight == 0
