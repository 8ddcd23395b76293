"""Execution-provider choice and fallback, configs, and the dynamic batcher.

Run: .venv/bin/pytest tests/serve/test_runtime_batching.py -q
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from servekit import ServerThread, random_pixels

from tl2edge.client import Client
from tl2edge.errors import UserError
from tl2edge.serve import runtime
from tl2edge.serve.batching import BatchConfig, Batcher
from tl2edge.serve.providers import DeviceUnavailable
from tl2edge.serve.repository import VersionPolicy
from tl2edge.serve.server import ServeConfig


def test_explicit_cuda_or_tensorrt_without_it_fails_clearly(repo):
    # (the whole provider policy is tested in test_providers.py; this is the server's path)
    path = repo / "tiny-int8" / "1" / "model.onnx"
    for device, provider in (
        ("cuda", "CUDAExecutionProvider"),
        ("tensorrt", "TensorrtExecutionProvider"),
    ):
        with pytest.raises(DeviceUnavailable) as exc:
            runtime.create_session(path, runtime.RuntimeConfig(device=device))
        assert provider in str(exc.value) and "onnxruntime-gpu" in str(exc.value)
    selection = runtime.create_session(path, runtime.RuntimeConfig(device="cpu"))
    assert selection.session.get_providers() == ["CPUExecutionProvider"]


def test_configs_validate_with_the_fix_in_the_message():
    with pytest.raises(UserError, match="device 'gpu' is not one of"):
        runtime.RuntimeConfig(device="gpu")
    with pytest.raises(UserError, match=r"max batch size \(0\)"):
        BatchConfig(max_batch_size=0)
    with pytest.raises(UserError, match="both --tls-cert and --tls-key"):
        ServeConfig(tls_cert="x.pem")  # type: ignore[arg-type]
    assert VersionPolicy.parse("latest").select([1, 2, 5]) == [5]
    assert VersionPolicy.parse("all").select([1, 2]) == [1, 2]
    assert VersionPolicy.parse("2, 5").select([1, 2, 3]) == [2]
    with pytest.raises(UserError, match="'latest', 'all'"):
        VersionPolicy.parse("newest")


def _tagging_model(calls: list[int]):  # type: ignore[no-untyped-def]
    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return batch[:, :1] * 2  # each output row is its own input row, doubled

    return run


def test_serve_flag_defaults_are_the_config_defaults():
    import argparse

    from tl2edge.serve.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--repository", "r"])
    serve, run, batch = ServeConfig(), runtime.RuntimeConfig(), BatchConfig()
    assert args.max_batch_size == batch.max_batch_size == 8
    assert (args.max_batch_delay_ms, args.instances) == (batch.max_batch_delay_ms, batch.instances)
    for name in ("max_message_mb", "max_concurrent_requests", "grace_s", "reload_interval_s"):
        assert getattr(args, name) == getattr(serve, name), name
    assert args.metrics_host == serve.metrics_host
    assert VersionPolicy.parse(args.model_version) == serve.version_policy
    for name in ("device", "intra_op_threads", "graph_optimization", "openvino_precision"):
        assert getattr(args, name) == getattr(run, name), name


def test_a_bad_serve_flag_is_one_error_line(capsys):
    from tl2edge.cli import main

    code = main(["serve", "--repository", "r", "--max-batch-delay-ms", "-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "max batch delay (-1.0 ms) must be >= 0 (--max-batch-delay-ms)" in err
    assert "Traceback" not in err


def test_batcher_coalesces_splits_and_keeps_rows_matched():
    async def scenario() -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        calls: list[int] = []
        seen: list[int] = []
        batcher = Batcher(
            _tagging_model(calls),
            BatchConfig(max_batch_size=4, max_batch_delay_ms=200),
            observer=lambda size, q, c: seen.append(size),
        )
        inputs = [np.full((n, 1), i, np.int64) for i, n in enumerate([1, 2, 1, 3, 9])]
        outputs = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        await batcher.close()
        assert seen == calls
        return calls, inputs, outputs

    calls, inputs, outputs = asyncio.run(scenario())
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(y, x * 2)
    assert sum(calls) == 16 and max(calls) <= 4
    assert len(calls) < 16 and any(c > 1 for c in calls)  # requests really were combined


def test_batcher_skips_cancelled_requests_and_drains_on_close():
    async def scenario() -> list[int]:
        calls: list[int] = []
        batcher = Batcher(
            _tagging_model(calls), BatchConfig(max_batch_size=8, max_batch_delay_ms=100)
        )
        gone = asyncio.ensure_future(batcher.submit(np.zeros((3, 1), np.int64)))
        kept = asyncio.ensure_future(batcher.submit(np.ones((2, 1), np.int64)))
        await asyncio.sleep(0)
        gone.cancel()
        closing = asyncio.ensure_future(batcher.close())
        np.testing.assert_array_equal(await kept, np.full((2, 1), 2))
        await closing
        return calls

    assert asyncio.run(scenario()) == [2]


def test_server_batches_concurrent_requests(repo):
    config = ServeConfig(batching=BatchConfig(max_batch_size=8, max_batch_delay_ms=300))
    pixels = random_pixels(8, seed=30)
    with ServerThread(repo, config=config) as s, Client(s.address) as c:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: c.infer("tiny-int8", pixels[i : i + 1]), range(8)))
        stats = s.server.repository.get("tiny-int8").stats
    from models import reference

    np.testing.assert_allclose(
        np.concatenate(results), reference(repo / "tiny-int8" / "1", pixels), rtol=1e-6
    )
    assert stats.inference_count == 8 and stats.execution_count < 8
    assert max(stats.batches) > 1


def test_requests_beyond_the_concurrency_limit_are_refused(repo, monkeypatch):
    import threading

    from tl2edge.serve import repository as repository_module

    release = threading.Event()
    real = repository_module.ort.InferenceSession.run

    def held(self, *args, **kwargs):
        if args and args[0] == ["probs"]:
            release.wait(30)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(repository_module.ort.InferenceSession, "run", held)
    config = ServeConfig(max_concurrent_requests=2)
    with ServerThread(repo, config=config) as s, Client(s.address, timeout=30) as c:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            held_calls = [pool.submit(c.infer, "tiny-int8", random_pixels(1)) for _ in range(2)]
            for _ in range(200):
                if s.server.plane.inflight == 2:
                    break
                threading.Event().wait(0.02)
            with pytest.raises(grpc.RpcError) as exc:
                c.infer("tiny-int8", random_pixels(1))
            assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-concurrent-requests" in exc.value.details()
            release.set()
            assert all(f.result(30).shape == (1, 3) for f in held_calls)
