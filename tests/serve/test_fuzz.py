"""Hypothesis fuzzing: over 2,000 malformed or hostile requests, then a valid one still
answered right, with nothing left in flight and memory where it was.

Shapes up to 2**63, typed contents in fields of the wrong width, huge, truncated and bomb
images, unicode and 1 MB model names, empty and duplicate inputs, unknown parameters.

Run: .venv/bin/pytest tests/serve/test_fuzz.py -q
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import reference
from servekit import jpeg_declaring, png_bomb, png_bytes, random_pixels

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
KSERVE_CASES = 1300
CLASSIFY_CASES = 700

LONG_NAME = "m" * 2**20
# mostly the real name, so most requests get past the lookup; 1 MB names now and then
model_names = st.sampled_from(
    ["tiny-int8"] * 6 + ["", "nope", "tiny-int8\u202e", "模型-ü"] + [LONG_NAME]
)
names = st.sampled_from(["image", "probs", "", "IMAGE", "image\x00", "é" * 300]) | st.text(
    max_size=8
)
datatypes = st.sampled_from(["UINT8", "FP32", "BYTES", "INT8", "FP16", "", "uint8", "INT64"])
dims = st.integers(-2, 12) | st.sampled_from([2**58 + 1, 2**63 - 1, 2**32, 2**31, -(2**63)])
shapes = st.lists(dims, max_size=10) | st.just([1, 8, 8, 3]) | st.just([2, 8, 8, 3])
blobs = st.binary(max_size=600)
CONTENTS = [
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
]
IMAGES = [
    png_bomb(12000, 12000),  # 144 MP, 140 KB
    png_bomb(20000, 20000, complete=False),  # beyond Pillow's own limit, and truncated
    png_bomb(3000, 3000, complete=False),  # legal size, truncated
    jpeg_declaring(60000, 60000),
    jpeg_declaring(7000, 7000),  # 49 MP: over --max-image-pixels
    png_bytes(random_pixels(1, size=20)[0])[:-30],  # truncated
    png_bytes(random_pixels(1, size=20)[0], "BMP")[:60],
    b"GIF89a" + b"\xff" * 20,
]
images = st.sampled_from(IMAGES) | blobs


def _values(draw, field: str) -> list:  # type: ignore[no-untyped-def]
    n = draw(st.sampled_from([0, 1, 3, 192, 384]))
    if field == "bool_contents":
        return [bool(i % 2) for i in range(n)]
    if field in ("fp32_contents", "fp64_contents"):
        return [draw(st.sampled_from([0.0, 255.0, -1.0, float("nan"), 1e30]))] * n
    if field == "bytes_contents":
        return draw(st.lists(images, max_size=3))
    top = {"int_contents": 2**31 - 1, "uint_contents": 2**32 - 1}.get(field, 2**63 - 1)
    return [draw(st.sampled_from([0, 7, 255, 256, top]))] * n


@st.composite
def kserve_requests(draw):  # type: ignore[no-untyped-def]
    r = pb.ModelInferRequest(
        model_name=draw(model_names),
        model_version=draw(st.sampled_from(["", "1", "2", "x", "-1", "9" * 5000])),
    )
    if draw(st.booleans()):
        r.parameters[draw(names)].string_param = draw(st.text(max_size=20))
    for _ in range(draw(st.integers(0, 2))):
        t = r.inputs.add(name=draw(names), datatype=draw(datatypes), shape=draw(shapes))
        if draw(st.booleans()):
            t.parameters["binary_data_size"].int64_param = draw(dims)
        for field in draw(st.lists(st.sampled_from(CONTENTS), max_size=2, unique=True)):
            getattr(t.contents, field).extend(_values(draw, field))
    if r.inputs and draw(st.integers(0, 4)) == 0:  # the same input twice
        r.inputs.append(r.inputs[0])
    for _ in range(draw(st.integers(0, 2))):
        r.raw_input_contents.append(draw(blobs | st.just(bytes(192)) | st.just(bytes(384))))
    if draw(st.booleans()):
        o = r.outputs.add(name=draw(names))
        if draw(st.booleans()):
            o.parameters["classification"].int64_param = draw(st.integers(-3, 5))
        if draw(st.booleans()):
            o.parameters[draw(names)].bool_param = True
    return r


@st.composite
def classify_requests(draw):  # type: ignore[no-untyped-def]
    r = cpb.ClassifyRequest(
        model=draw(model_names | st.just("zz")),
        model_version=draw(st.sampled_from(["", "1", "x"])),
        top_k=draw(st.integers(0, 9)),
    )
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.integers(0, 2))
        if kind == 0:
            r.images.add(encoded=draw(images))
        elif kind == 1:
            h, w = draw(st.integers(0, 9) | dims), draw(st.integers(0, 9) | dims)
            h, w = max(0, min(h, 2**31 - 1)), max(0, min(w, 2**31 - 1))
            r.images.add(pixels=cpb.RawImage(data=draw(blobs), height=h, width=w))
        else:
            r.images.add()
    return r


def _call(fn, request) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(request, timeout=20)
    except grpc.RpcError as exc:
        shown = str(request)[:2000]
        assert exc.code() in EXPECTED, f"{exc.code()}: {exc.details()} for {shown}"
        SEEN.append(exc.code().name)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.slow
def test_fuzzed_requests_never_break_the_server(server, repo):
    options = [("grpc.max_send_message_length", 64 * 2**20)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        kserve = pb_grpc.GRPCInferenceServiceStub(channel)
        classifier = cpb_grpc.ClassifierStub(channel)
        common = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}

        @settings(max_examples=KSERVE_CASES, **common)
        @given(kserve_requests())
        def fuzz_kserve(request):  # type: ignore[no-untyped-def]
            _call(kserve.ModelInfer, request)

        @settings(max_examples=CLASSIFY_CASES, **common)
        @given(classify_requests())
        def fuzz_classify(request):  # type: ignore[no-untyped-def]
            _call(classifier.Classify, request)

        SEEN.clear()
        rss_before = _rss_mb()
        fuzz_kserve()
        fuzz_classify()
        assert len(SEEN) >= 1500, f"only {len(SEEN)} requests were malformed"
        pixels = random_pixels(2, seed=99)
        request = pb.ModelInferRequest(model_name="tiny-int8")
        request.inputs.add(name="image", datatype="UINT8", shape=[2, 8, 8, 3])
        request.raw_input_contents.append(pixels.tobytes())
        response = kserve.ModelInfer(request, timeout=20)
        probs = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 3)
        np.testing.assert_allclose(probs, reference(repo / "tiny-int8" / "1", pixels), rtol=1e-6)
        plane = server.server.plane
        assert plane.inflight == 0 and plane.budget.used == 0
        assert _rss_mb() - rss_before < 300  # client and server share this process
        assert all(m.batcher.alive for m in server.server.repository.all())
