"""Peak memory of a real server process under decompression bombs and huge typed tensors.

Run: .venv/bin/pytest tests/serve/test_memory.py -q

Bound: the server's peak RSS (VmHWM) may grow by at most GROWTH_MB over its RSS after
warm-up while 8 clients attack: the 96 MB budget, plus the messages being parsed (gRPC holds
a message before any check can refuse it; --max-message-mb bounds each), plus allocator
slack (measured here: 150-220 MB of growth). Unbounded, one 12000x12000 PNG bomb alone decodes to
144 MB of gray plus 432 MB of RGB; the budget here (--max-inflight-mb 96) lets through at
most one 4900x4900 image (the largest legal one) at a time.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from models import reference, write_version
from servekit import jpeg_declaring, png_bomb, random_pixels, start_cli_server

from tl2edge._proto import classifier_pb2 as cpb
from tl2edge._proto import classifier_pb2_grpc as cpb_grpc
from tl2edge._proto import grpc_service_pb2 as pb
from tl2edge._proto import grpc_service_pb2_grpc as pb_grpc

MODEL = "tiny-int8"
GROWTH_MB = 320


def _kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _attacks() -> list[tuple[str, object]]:
    bombs = [png_bomb(12000, 12000), png_bomb(20000, 20000, complete=False)]
    bombs += [jpeg_declaring(60000, 60000), png_bomb(3000, 3000)]
    out: list[tuple[str, object]] = []
    for data in bombs:
        request = cpb.ClassifyRequest(model=MODEL)
        request.images.add(encoded=data)
        out.append(("classify", request))
    typed = pb.ModelInferRequest(model_name=MODEL)
    typed.inputs.add(name="image", datatype="UINT8", shape=[1, 8, 8, 3])
    typed.inputs[0].contents.uint_contents.extend(np.full(3_000_000, 200, np.uint32).tolist())
    out.append(("kserve", typed))
    wrapped = pb.ModelInferRequest(model_name=MODEL)
    wrapped.inputs.add(name="image", datatype="UINT8", shape=[2**58 + 1, 8, 8, 3])
    wrapped.raw_input_contents.append(bytes(192))
    out.append(("kserve", wrapped))
    fp32 = pb.ModelInferRequest(model_name=MODEL)
    fp32.inputs.add(name="image", datatype="FP32", shape=[5_000, 8, 8, 3])
    fp32.raw_input_contents.append(bytes(5_000 * 192 * 4))  # 3.7 MB, more than 1024 images
    out.append(("kserve", fp32))
    return out


@pytest.mark.slow
def test_bombs_and_huge_tensors_keep_peak_memory_bounded(tmp_path):
    repo = tmp_path / "repo"
    write_version(repo, MODEL, 1)
    proc, event = start_cli_server(
        ["--repository", str(repo), "--max-inflight-mb", "96", "--max-message-mb", "64"], tmp_path
    )
    try:
        pixels = random_pixels(1, seed=3)
        good = pb.ModelInferRequest(model_name=MODEL)
        good.inputs.add(name="image", datatype="UINT8", shape=[1, 8, 8, 3])
        good.raw_input_contents.append(pixels.tobytes())
        attacks = _attacks()
        with grpc.insecure_channel(
            event["address"], options=[("grpc.max_send_message_length", 64 * 2**20)]
        ) as channel:
            kserve = pb_grpc.GRPCInferenceServiceStub(channel)
            classify = cpb_grpc.ClassifierStub(channel)
            kserve.ModelInfer(good, timeout=30)
            baseline_kb = _kb(proc.pid, "VmRSS")

            def send(item: tuple[str, object]) -> str:
                kind, request = item
                call = classify.Classify if kind == "classify" else kserve.ModelInfer
                try:
                    call(request, timeout=60)
                    return "OK"
                except grpc.RpcError as exc:
                    return exc.code().name

            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(send, attacks * 4))
            peak_kb = _kb(proc.pid, "VmHWM")
            assert "INTERNAL" not in codes and "UNKNOWN" not in codes, codes
            assert codes.count("INVALID_ARGUMENT") >= 6 * 4, codes
            growth_mb = (peak_kb - baseline_kb) / 1024
            assert growth_mb < GROWTH_MB, f"peak RSS grew {growth_mb:.0f} MB over {baseline_kb} kB"
            response = kserve.ModelInfer(good, timeout=30)  # still answering, and right
            probs = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(1, 3)
            np.testing.assert_allclose(probs, reference(repo / MODEL / "1", pixels), rtol=1e-6)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
