"""Health transitions, graceful drain, SIGTERM, hot reload and metrics.

Run: .venv/bin/pytest tests/serve/test_lifecycle.py -q
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from models import reference, write_version
from servekit import ServerThread, random_pixels, start_cli_server

from tl2edge.client import Client
from tl2edge.serve import repository as repository_module
from tl2edge.serve.batching import BatchConfig
from tl2edge.serve.server import ServeConfig

MODEL = "tiny-int8"


def test_health_loading_serving_draining(repo, monkeypatch):
    gate = threading.Event()
    real_warm_up = repository_module.warm_up

    def slow_warm_up(*args, **kwargs):
        gate.wait(30)
        real_warm_up(*args, **kwargs)

    monkeypatch.setattr(repository_module, "warm_up", slow_warm_up)
    s = ServerThread(repo, start=False)
    try:
        s.start()
        with Client(s.address, timeout=5) as c:
            c_state = None
            for _ in range(100):  # the port opens before the models load
                try:
                    c_state = c.health()
                    break
                except grpc.RpcError:
                    time.sleep(0.05)
            assert c_state == "NOT_SERVING"
            with pytest.raises(grpc.RpcError) as exc:
                c.infer(MODEL, random_pixels(1))
            assert exc.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
            gate.set()
            c.wait_until_serving(30)
            assert c.health(MODEL) == "SERVING"
            s.call(_begin_drain(s))
            assert c.health() == "NOT_SERVING" and c.health(MODEL) == "NOT_SERVING"
            with pytest.raises(grpc.RpcError) as exc:
                c.infer(MODEL, random_pixels(1))
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in exc.value.details()
    finally:
        gate.set()
        s.stop()


async def _begin_drain(s):  # the first half of Server.stop, so the port stays open
    s.server.plane.draining = True
    await s.server._set_health(2)


def test_drain_finishes_in_flight_requests(repo, monkeypatch):
    release = threading.Event()
    started = threading.Semaphore(0)
    real = repository_module.ort.InferenceSession.run

    def held_run(self, *args, **kwargs):
        if args and args[0] == ["probs"]:  # requests, not warm-up
            started.release()
            release.wait(30)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(repository_module.ort.InferenceSession, "run", held_run)
    config = ServeConfig(batching=BatchConfig(max_batch_size=1, instances=4))
    s = ServerThread(repo, config=config)
    pixels = random_pixels(4, seed=12)
    with Client(s.address, timeout=30) as c, ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(c.infer, MODEL, pixels[i : i + 1]) for i in range(4)]
        for _ in range(4):
            assert started.acquire(timeout=30)
        stopping = threading.Thread(target=s.stop, kwargs={"grace": 30})
        stopping.start()
        for _ in range(100):
            if s.server.plane.draining:
                break
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as exc:
            c.infer(MODEL, pixels[:1], timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        release.set()
        results = [f.result(timeout=30) for f in futures]
        stopping.join(30)
    np.testing.assert_allclose(
        np.concatenate(results), reference(repo / MODEL / "1", pixels), rtol=1e-6
    )


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path):
    repo = tmp_path / "repo"
    write_version(repo, "slow-fp32", 1, work=150)
    proc, event = start_cli_server(
        ["--repository", str(repo), "--max-batch-size", "1", "--grace-s", "30"], tmp_path
    )
    address = event["address"]
    assert "slow-fp32 v1" in event["models"] and "CPUExecutionProvider" in event["models"]
    with urllib.request.urlopen(f"http://127.0.0.1:{event['metrics_port']}/metrics") as r:
        assert b"tl2edge_ready 1.0" in r.read()
    pixels = random_pixels(6, seed=4)
    with Client(address, timeout=60) as c, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(c.infer, "slow-fp32", pixels[i : i + 1]) for i in range(6)]
        for _ in range(200):  # until the server holds them
            stats = c._kserve.ModelStatistics(
                __import__(
                    "tl2edge._proto.grpc_service_pb2", fromlist=["x"]
                ).ModelStatisticsRequest()
            )
            if stats.model_stats[0].execution_count >= 1:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=60) for f in futures]  # none lost
    assert proc.wait(60) == 0
    np.testing.assert_allclose(
        np.concatenate(results), reference(repo / "slow-fp32" / "1", pixels), rtol=1e-5
    )
    log = (tmp_path / "serve.log").read_text()
    assert '"msg": "draining"' in log and '"msg": "stopped"' in log


def test_device_cuda_fails_clearly(tmp_path, repo):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tl2edge",
            "serve",
            "--repository",
            str(repo),
            "--device",
            "cuda",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "error: --device cuda: " in proc.stderr and "no CUDAExecutionProvider" in proc.stderr
    assert "onnxruntime-gpu" in proc.stderr and "Traceback" not in proc.stderr


def test_hot_reload_swaps_versions_without_failures(tmp_path):
    repo = tmp_path / "repo"
    write_version(repo, MODEL, 1, seed=1)
    config = ServeConfig(reload_interval_s=0.2)
    pixels = random_pixels(1, seed=21)
    failures: list[str] = []
    versions: set[str] = set()
    stop = threading.Event()
    with ServerThread(repo, config=config) as s, Client(s.address, timeout=30) as c:
        from tl2edge._proto import grpc_service_pb2 as pb

        def hammer() -> None:
            while not stop.is_set():
                request = pb.ModelInferRequest(model_name=MODEL)
                request.inputs.add(name="image", datatype="UINT8", shape=[1, 8, 8, 3])
                request.raw_input_contents.append(pixels.tobytes())
                try:
                    versions.add(c._kserve.ModelInfer(request, timeout=30).model_version)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")

        workers = [threading.Thread(target=hammer) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            time.sleep(0.3)
            write_version(repo, MODEL, 3, corrupt=True)  # bad sha256: logged, not served
            write_version(repo, MODEL, 2, seed=2)
            for _ in range(150):
                if "2" in versions:
                    break
                time.sleep(0.1)
            shutil.rmtree(repo / MODEL / "3")
            write_version(repo, MODEL, 4, seed=4)
            for _ in range(150):
                if "4" in versions:
                    break
                time.sleep(0.1)
        finally:
            stop.set()
            for w in workers:
                w.join(30)
        assert not failures, failures[:3]
        assert {"1", "2", "4"} <= versions and "3" not in versions
        np.testing.assert_allclose(
            c.infer(MODEL, pixels), reference(repo / MODEL / "4", pixels), rtol=1e-6
        )
        assert sorted(s.server.repository.models[MODEL]) == [4]


def test_metrics_count_outcomes_batches_and_providers(repo):
    with ServerThread(repo, config=ServeConfig(metrics_port=0)) as s, Client(s.address) as c:
        c.infer(MODEL, random_pixels(3))
        c.classify([random_pixels(1)[0]])
        with pytest.raises(grpc.RpcError):
            c.infer("nope", random_pixels(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{s.server.metrics_port}/metrics") as r:
            text = r.read().decode()
    assert (
        'tl2edge_requests_total{api="kserve.ModelInfer",model="tiny-int8",outcome="OK"} 1.0' in text
    )
    assert (
        'tl2edge_requests_total{api="kserve.ModelInfer",model="unknown",outcome="NOT_FOUND"} 1.0'
        in text
    )
    assert "nope" not in text  # a client's string never becomes a label
    assert 'tl2edge_requests_total{api="classifier.Classify",model="-",outcome="OK"} 1.0' in text
    assert 'tl2edge_batch_size_count{model="tiny-int8"} 2.0' in text
    assert 'tl2edge_batch_size_sum{model="tiny-int8"} 4.0' in text
    assert 'providers="CPUExecutionProvider"' in text and "tl2edge_queue_seconds_bucket" in text
    assert "tl2edge_inflight_requests 0.0" in text


def test_a_model_onnx_runtime_cannot_load_is_one_clear_line(tmp_path, capsys):
    from tl2edge.cli import main

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    code = main(
        ["serve", "--model", str(bad), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "ONNX Runtime cannot load this model" in err and str(bad) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("api", ["classify", "kserve"])
def test_drain_ends_open_streams_with_unavailable(repo, api):
    """An idle camera stream must not hold shutdown until the grace period (600 s here) ends."""
    from tl2edge._proto import classifier_pb2 as cpb
    from tl2edge._proto import classifier_pb2_grpc as cpb_grpc
    from tl2edge._proto import grpc_service_pb2 as kpb
    from tl2edge._proto import grpc_service_pb2_grpc as kpb_grpc

    s = ServerThread(repo)
    pixels = random_pixels(1, seed=3)
    keep_open = threading.Event()

    def frames():
        if api == "classify":
            request = cpb.ClassifyRequest(model=MODEL, top_k=1, id="f0")
            request.images.add(pixels=cpb.RawImage(height=8, width=8, data=pixels.tobytes()))
        else:
            request = kpb.ModelInferRequest(model_name=MODEL, id="f0")
            request.inputs.add(name="image", datatype="UINT8", shape=[1, 8, 8, 3])
            request.raw_input_contents.append(pixels.tobytes())
        yield request
        keep_open.wait(120)  # the camera is idle, the stream stays open

    stopping = threading.Thread(target=s.stop, kwargs={"grace": 600})
    try:
        with grpc.insecure_channel(s.address) as channel:
            if api == "classify":
                responses = cpb_grpc.ClassifierStub(channel).ClassifyStream(frames(), timeout=20)
            else:
                responses = kpb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
                    frames(), timeout=20
                )
            first = next(responses)
            assert (first.id if api == "classify" else first.infer_response.id) == "f0"
            stopping.start()
            with pytest.raises(grpc.RpcError) as exc:
                next(responses)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in exc.value.details()
            stopping.join(120)
            assert not stopping.is_alive(), "stop() waited for the open stream"
    finally:
        keep_open.set()
        if not stopping.is_alive() and not stopping.ident:
            s.stop()
