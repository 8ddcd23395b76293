"""Hostile input and bad deploys: bounded shapes, typed contents, image headers and bytes in
flight; metric labels only for served models; a batcher that survives any batch; start-up
on the newest version that loads.

Run: .venv/bin/pytest tests/serve/test_limits.py -q
"""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest
from models import reference, write_version
from servekit import ServerThread, jpeg_declaring, png_bomb, png_bytes, random_pixels

from tl2edge._proto import classifier_pb2 as cpb
from tl2edge._proto import classifier_pb2_grpc as cpb_grpc
from tl2edge._proto import grpc_service_pb2 as pb
from tl2edge._proto import grpc_service_pb2_grpc as pb_grpc
from tl2edge.images import ImageTooLarge, decode_rgb, decode_rgb_bounded
from tl2edge.serve.batching import BatchConfig, Batcher, WrongInput
from tl2edge.serve.server import ServeConfig

MODEL = "tiny-int8"


def _infer_request(shape, *, raw: bytes | None = None, datatype: str = "UINT8", name=MODEL):
    request = pb.ModelInferRequest(model_name=name)
    request.inputs.add(name="image", datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def _code(call, request) -> grpc.StatusCode:
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# -- images --------------------------------------------------------------------------------
def test_image_header_is_checked_before_decoding():
    held: list[int] = []

    def reserve(n: int):  # type: ignore[no-untyped-def]
        held.append(n)
        return __import__("contextlib").nullcontext()

    with pytest.raises(ImageTooLarge, match="12000x12000"):
        decode_rgb_bounded(png_bomb(12000, 12000), (8, 8), max_pixels=25_000_000, reserve=reserve)
    with pytest.raises(ImageTooLarge, match="--max-image-pixels"):
        decode_rgb_bounded(png_bomb(101, 100), (8, 8), max_pixels=10_000, reserve=reserve)
    with pytest.raises(ImageTooLarge):  # beyond Pillow's own limit: its error, ours to report
        decode_rgb_bounded(jpeg_declaring(60000, 60000), (8, 8), max_pixels=10**10)
    assert held == []  # nothing was decoded


def test_large_jpeg_is_decoded_at_reduced_scale_with_the_same_result():
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((40, 40, 1))).astype(np.uint8)
    jpeg = png_bytes(smooth, "JPEG")  # 320x320
    held: list[int] = []

    def reserve(n: int):  # type: ignore[no-untyped-def]
        held.append(n)
        return __import__("contextlib").nullcontext()

    fast = decode_rgb_bounded(jpeg, (8, 8), max_pixels=10**6, reserve=reserve)
    assert held == [40 * 40 * 3]  # decoded at 1/8 scale (>= twice the target), not 320x320
    exact = decode_rgb(jpeg, 8)
    assert np.abs(fast.astype(int) - exact.astype(int)).mean() < 4


# -- shapes and typed contents --------------------------------------------------------------
def test_huge_shapes_and_typed_contents_are_invalid_argument(server):
    with grpc.insecure_channel(server.address) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        raw = random_pixels(1).tobytes()
        for shape in ([2**58 + 1, 8, 8, 3], [2**63 - 1, 8, 8, 3], [1] * 9, [2**40, 8, 8, 3]):
            assert _code(infer, _infer_request(shape, raw=raw)) == grpc.StatusCode.INVALID_ARGUMENT
        for shape in ([2**62], [2**20, 1]):
            request = _infer_request(shape, raw=b"\0\0\0\0", datatype="BYTES")
            assert _code(infer, request) == grpc.StatusCode.INVALID_ARGUMENT
        wrong_width = _infer_request([1, 8, 8, 3])
        wrong_width.inputs[0].contents.int64_contents.extend([1] * 192)
        assert _code(infer, wrong_width) == grpc.StatusCode.INVALID_ARGUMENT
        too_many = _infer_request([1, 8, 8, 3])
        too_many.inputs[0].contents.uint_contents.extend([7] * 1_000_000)
        assert _code(infer, too_many) == grpc.StatusCode.INVALID_ARGUMENT
        too_big = _infer_request([1, 8, 8, 3])
        too_big.inputs[0].contents.uint_contents.extend([256] * 192)
        assert _code(infer, too_big) == grpc.StatusCode.INVALID_ARGUMENT
        # the right field, the right count: answered like raw bytes
        pixels = random_pixels(1, seed=5)
        typed = _infer_request([1, 8, 8, 3])
        typed.inputs[0].contents.uint_contents.extend(pixels.ravel().tolist())
        probs = np.frombuffer(infer(typed, timeout=30).raw_output_contents[0], "<f4")
        np.testing.assert_allclose(probs, reference(server.source / MODEL / "1", pixels)[0], 1e-6)


def test_bytes_in_flight_beyond_the_budget_get_resource_exhausted(repo):
    config = ServeConfig(max_inflight_mb=1)
    with ServerThread(repo, config=config) as s, grpc.insecure_channel(s.address) as channel:
        classify = cpb_grpc.ClassifierStub(channel).Classify
        big = cpb.ClassifyRequest(model=MODEL)
        big.images.add(encoded=b"\0" * (2 * 2**20))
        assert _code(classify, big) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # decoding a 1500x1500 grey image would hold 2.25 MB: refused before decoding
        wide = cpb.ClassifyRequest(model=MODEL)
        wide.images.add(encoded=png_bomb(1500, 1500))
        assert _code(classify, wide) == grpc.StatusCode.RESOURCE_EXHAUSTED
        small = cpb.ClassifyRequest(model=MODEL)
        small.images.add(encoded=png_bytes(random_pixels(1, size=20)[0]))
        assert _code(classify, small) == grpc.StatusCode.OK
        assert s.server.plane.budget.used == 0


# -- metrics ----------------------------------------------------------------------------------
def _series(registry) -> int:  # type: ignore[no-untyped-def]
    return sum(len(metric.samples) for metric in registry.collect())


def test_ten_thousand_bogus_model_names_add_no_series(server):
    from tl2edge.serve.kserve import KServeServicer

    plane = server.server.plane
    servicer = KServeServicer(plane)
    pixels = random_pixels(1).tobytes()

    async def bogus(count: int) -> int:
        refused = 0
        for i in range(count):
            request = _infer_request([1, 8, 8, 3], raw=pixels, name=f"y{i}-{'x' * (i % 50)}")
            try:
                await servicer._infer(request, "kserve.ModelInfer")
            except Exception as exc:
                refused += exc.code == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        return refused

    server.call(bogus(1))  # the `unknown` series exists from here on
    before = _series(plane.metrics.registry)
    assert server.call(bogus(10_000), timeout=300) == 10_000
    assert _series(plane.metrics.registry) == before
    text = __import__("prometheus_client").generate_latest(plane.metrics.registry).decode()
    assert 'model="unknown",outcome="NOT_FOUND"} 10001.0' in text and "y17" not in text


# -- batcher ----------------------------------------------------------------------------------
def test_a_failing_batch_fails_only_its_requests_and_the_worker_lives_on():
    calls: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if batch[0, 0] == 99:
            raise RuntimeError("model blew up")
        return batch.astype(np.float32) * 2

    async def scenario() -> None:
        batcher = Batcher(run, BatchConfig(max_batch_size=4), item_shape=(2,), dtype=np.uint8)
        good = np.ones((1, 2), np.uint8)
        with pytest.raises(WrongInput):  # validated for another version: never queued
            await batcher.submit(np.ones((1, 3), np.uint8))
        with pytest.raises(WrongInput):
            await batcher.submit(np.ones((1, 2), np.float32))
        with pytest.raises(RuntimeError, match="blew up"):
            await batcher.submit(np.full((1, 2), 99, np.uint8))
        out = await asyncio.gather(*(batcher.submit(good * i) for i in range(1, 6)))
        assert [int(o[0, 0]) for o in out] == [2, 4, 6, 8, 10]
        # a batch that cannot be formed: it fails, the worker goes on
        from tl2edge.serve.batching import _Item

        odd = _Item(np.ones((1, 5), np.uint8), asyncio.get_running_loop().create_future())
        batcher._queue.append(odd)
        batcher._queued_rows += 1
        with pytest.raises(ValueError):
            await batcher.submit(good)
        assert isinstance(odd.future.exception(), ValueError)
        assert batcher.alive
        assert int((await batcher.submit(good * 3))[0, 0]) == 6
        await batcher.close()

    asyncio.run(scenario())


def _encoded_image() -> bytes:
    return png_bytes(random_pixels(1, size=24, seed=8)[0])


def test_hot_reload_across_size_and_dtype_changes_under_load(tmp_path):
    repo = tmp_path / "repo"
    write_version(repo, MODEL, 1, size=8)
    config = ServeConfig(reload_interval_s=0.1)
    outcomes: dict[str, int] = {}
    versions: set[str] = set()
    stop = threading.Event()
    lock = threading.Lock()
    with ServerThread(repo, config=config) as s, grpc.insecure_channel(s.address) as channel:
        classify = cpb_grpc.ClassifierStub(channel).Classify
        kserve = pb_grpc.GRPCInferenceServiceStub(channel)

        def hammer(i: int) -> None:
            encoded = _encoded_image()
            while not stop.is_set():
                if i % 2:
                    request = cpb.ClassifyRequest(model=MODEL)
                    request.images.add(encoded=encoded)
                    request.images.add(encoded=encoded)
                    call = classify
                else:
                    request = _infer_request([2], datatype="BYTES")
                    request.inputs[0].contents.bytes_contents.extend([encoded, encoded])
                    call = kserve.ModelInfer
                try:
                    response = call(request, timeout=20)
                    key = "OK"
                    with lock:
                        versions.add(getattr(response, "model_version", ""))
                except grpc.RpcError as exc:
                    key = exc.code().name
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        assert "retry" in exc.details()
                with lock:
                    outcomes[key] = outcomes.get(key, 0) + 1

        workers = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
        for w in workers:
            w.start()
        try:
            for version, size, datatype in ((2, 16, "UINT8"), (3, 16, "FP32"), (4, 8, "FP32")):
                time.sleep(0.3)
                write_version(repo, MODEL, version, size=size, datatype=datatype, seed=version)
                for _ in range(300):
                    if str(version) in versions:
                        break
                    time.sleep(0.05)
            time.sleep(0.3)
        finally:
            stop.set()
            for w in workers:
                w.join(60)
        assert not any(w.is_alive() for w in workers)  # nothing hung
        assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
        assert {"2", "3", "4"} <= versions
        assert all(m.batcher.alive for m in s.server.repository.all())
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check(health_pb2.HealthCheckRequest(service=MODEL), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        request = cpb.ClassifyRequest(model=MODEL)
        request.images.add(encoded=_encoded_image())
        response = classify(request, timeout=20)
        assert response.model_version == "4"
        expected = reference(
            repo / MODEL / "4", decode_rgb(_encoded_image(), 8)[None].astype(np.float32)
        )
        assert response.results[0].predictions[0].index == int(np.argmax(expected))


# -- start-up ---------------------------------------------------------------------------------
def test_start_up_skips_a_corrupt_newest_version(tmp_path):
    repo = tmp_path / "repo"
    write_version(repo, MODEL, 1, seed=1)
    write_version(repo, MODEL, 2, corrupt=True)  # sha256 does not match
    write_version(repo, "other-fp32", 2, seed=3)
    config = ServeConfig(metrics_port=0)
    with ServerThread(repo, config=config) as s:
        assert sorted(s.server.repository.models[MODEL]) == [1]
        assert sorted(s.server.repository.models["other-fp32"]) == [2]
        assert (MODEL, 2) in s.server.repository.skipped
        text = __import__("prometheus_client").generate_latest(s.server.plane.metrics.registry)
        assert b'tl2edge_model_version_skipped{model="tiny-int8",version="2"} 1.0' in text
        with grpc.insecure_channel(s.address) as channel:
            infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            pixels = random_pixels(1, seed=2)
            response = infer(_infer_request([1, 8, 8, 3], raw=pixels.tobytes()), timeout=30)
        assert response.model_version == "1"


def test_start_up_fails_only_when_a_model_has_no_loadable_version(tmp_path, capsys):
    from tl2edge.cli import main

    repo = tmp_path / "repo"
    write_version(repo, MODEL, 1, corrupt=True)
    write_version(repo, MODEL, 2, corrupt=True)
    write_version(repo, "fine-fp32", 1)
    args = ["--repository", str(repo), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"]
    code = main(["serve", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert f"no loadable version of model(s) {MODEL}" in err
    assert f"{MODEL} v1:" in err and f"{MODEL} v2:" in err and "Traceback" not in err


def test_cli_limit_defaults_are_the_config_defaults():
    import argparse

    from tl2edge.serve.cli import add_limit_arguments

    parser = argparse.ArgumentParser()
    add_limit_arguments(parser)
    args = parser.parse_args([])
    assert args.max_inflight_mb == ServeConfig().max_inflight_mb
    assert args.max_image_pixels == ServeConfig().max_image_pixels
    assert args.large_image_pixels == ServeConfig().large_image_pixels
    assert args.large_image_queue == ServeConfig().large_image_queue


def test_grey_images_are_resized_before_becoming_rgb_with_identical_pixels():
    grey = np.random.default_rng(4).integers(0, 256, (60, 40, 1), dtype=np.uint8)
    png = png_bytes(np.repeat(grey, 3, axis=2)[..., :1].squeeze(-1))
    held: list[int] = []

    def reserve(n: int):  # type: ignore[no-untyped-def]
        held.append(n)
        return __import__("contextlib").nullcontext()

    out = decode_rgb_bounded(png, (8, 8), max_pixels=10**6, reserve=reserve)
    assert held == [60 * 40]  # the grey frame only, no full-size RGB copy
    np.testing.assert_array_equal(out, decode_rgb(png, 8))


def test_held_bytes_counts_typed_values_at_their_parsed_width():
    from tl2edge.serve.kserve import ENTRY_BYTES, held_bytes

    typed = _infer_request([1, 10, 10, 3])
    typed.inputs[0].contents.uint_contents.extend([1] * 300)  # 1 byte each on the wire
    raw = _infer_request([1, 10, 10, 3], raw=bytes(300))
    texts = _infer_request([2], datatype="BYTES")
    texts.inputs[0].contents.bytes_contents.extend([b"x" * 1000, b"y" * 500])
    header = 2 * ENTRY_BYTES + 8 * 4
    assert held_bytes(typed) == header + 4 * 300
    assert held_bytes(raw) == header + 300
    assert held_bytes(texts) == 2 * ENTRY_BYTES + 8 + 1500
    assert held_bytes(typed) > typed.ByteSize()  # the parsed form, not the wire size
