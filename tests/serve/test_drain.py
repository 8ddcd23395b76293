"""Drain and connections: the stream window keeps every received frame, health Watch
streams end at drain, connection flags reach grpc, and a real server process answers
everything it received when SIGTERM arrives mid-stream, mid-watch and mid-request.

Run: .venv/bin/pytest tests/serve/test_drain.py -q
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from models import reference, write_version
from servekit import ServerThread, random_pixels, start_cli_server

from tl2edge._proto import classifier_pb2 as cpb
from tl2edge._proto import classifier_pb2_grpc as cpb_grpc
from tl2edge.client import Client
from tl2edge.errors import UserError
from tl2edge.serve.cli import CONNECTION_FLAGS
from tl2edge.serve.connections import ConnectionConfig
from tl2edge.serve.dataplane import ordered_stream

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_a_drain_with_a_full_window_answers_every_message_taken():
    """The reader is cancelled while the window is full: nothing it took goes unanswered."""

    async def scenario() -> tuple[int, list[int]]:
        taken = 0
        release = asyncio.Event()
        until = asyncio.Event()

        async def frames():
            nonlocal taken
            for i in range(1000):
                taken += 1
                yield i

        async def handle(i: int) -> int:
            await release.wait()
            return i

        answers: list[int] = []

        async def consume() -> None:
            async for answer in ordered_stream(frames(), handle, window=4, until=until):
                answers.append(answer)

        consumer = asyncio.ensure_future(consume())
        for _ in range(100):  # let the reader fill the window
            await asyncio.sleep(0)
        until.set()
        await asyncio.sleep(0)
        release.set()
        await asyncio.wait_for(consumer, 10)
        return taken, answers

    taken, answers = asyncio.run(scenario())
    assert taken >= 4
    assert answers == list(range(taken))


def test_ordered_stream_answers_in_order_until_the_end():
    async def scenario() -> list[int]:
        async def frames():
            for i in range(40):
                yield i

        async def handle(i: int) -> int:
            await asyncio.sleep(0.001 * (i % 3))  # finish out of order
            return i * 10

        return [a async for a in ordered_stream(frames(), handle, window=8)]

    assert asyncio.run(scenario()) == [i * 10 for i in range(40)]


def test_connection_flags_defaults_agree_and_reach_grpc():
    default = ConnectionConfig()
    assert {k: v[0] for k, v in CONNECTION_FLAGS.items()} == {
        k: getattr(default, k) for k in CONNECTION_FLAGS
    }
    options = dict(default.options())
    assert options["grpc.keepalive_time_ms"] == 60_000
    assert options["grpc.max_concurrent_streams"] == 100
    assert options["grpc.max_connection_age_ms"] == 1_800_000
    assert "grpc.max_connection_age_grace_ms" not in options  # open streams are never cut
    custom = dict(ConnectionConfig(max_connection_age_s=0, max_connection_age_grace_s=5).options())
    assert "grpc.max_connection_age_ms" not in custom
    assert custom["grpc.max_connection_age_grace_ms"] == 5000
    with pytest.raises(UserError, match="--max-connection-idle-s -1"):
        ConnectionConfig(max_connection_idle_s=-1)
    with pytest.raises(UserError, match="--max-concurrent-streams"):
        ConnectionConfig(max_concurrent_streams=0)


def test_max_concurrent_streams_is_enforced(repo):
    """With 1 stream per connection, a second call on the same channel waits for the first."""
    from tl2edge.serve.server import ServeConfig

    config = ServeConfig(connections=ConnectionConfig(max_concurrent_streams=1))
    with ServerThread(repo, config=config) as s, grpc.insecure_channel(s.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == SERVING
        check = health_pb2_grpc.HealthStub(channel).Check
        with pytest.raises(grpc.RpcError) as exc:
            check(health_pb2.HealthCheckRequest(), timeout=1)
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        watch.cancel()
        assert check(health_pb2.HealthCheckRequest(), timeout=20).status == SERVING


def _states(channel: grpc.Channel) -> list[grpc.ChannelConnectivity]:
    """The channel's connectivity states as gRPC reports them (from its own thread, so a
    state may arrive a little after the call that caused it returned)."""
    seen: list[grpc.ChannelConnectivity] = []
    channel.subscribe(seen.append, try_to_connect=True)
    return seen


def _within(seconds: float, condition) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_connection_age_recycles_live_connections_without_cutting_a_stream(repo):
    """Over time on a live connection: the age limit makes the client reconnect (its calls
    all succeed), and a stream open across the limit is not cut (age grace unlimited)."""
    from tl2edge.serve.server import ServeConfig

    config = ServeConfig(connections=ConnectionConfig(max_connection_age_s=1.0))
    pixels = random_pixels(1, seed=2)

    def frames():
        for i in range(14):  # about 2.8 s, more than twice the connection age
            time.sleep(0.2)
            request = cpb.ClassifyRequest(id=f"f{i}")
            request.images.add(pixels=cpb.RawImage(height=8, width=8, data=pixels.tobytes()))
            yield request

    with ServerThread(repo, config=config) as s:
        with grpc.insecure_channel(s.address) as channel:
            stream = cpb_grpc.ClassifierStub(channel).ClassifyStream(frames(), timeout=60)
            answers = list(stream)
        assert [a.id for a in answers] == [f"f{i}" for i in range(14)]
        assert not any(a.error for a in answers)
        with grpc.insecure_channel(s.address) as channel:
            states = _states(channel)
            check = health_pb2_grpc.HealthStub(channel).Check
            deadline = time.monotonic() + 3.5
            while time.monotonic() < deadline:
                assert check(health_pb2.HealthCheckRequest(), timeout=20).status == SERVING
                time.sleep(0.05)
        # connected again after the server closed the old one
        assert _within(5, lambda: states.count(grpc.ChannelConnectivity.READY) >= 2), states


def test_idle_connections_are_closed_and_the_next_call_reconnects(repo):
    from tl2edge.serve.server import ServeConfig

    config = ServeConfig(connections=ConnectionConfig(max_connection_idle_s=0.5))
    with ServerThread(repo, config=config) as s, grpc.insecure_channel(s.address) as channel:
        states = _states(channel)
        check = health_pb2_grpc.HealthStub(channel).Check
        assert check(health_pb2.HealthCheckRequest(), timeout=20).status == SERVING
        ready, idle = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE

        def closed_after_ready() -> bool:
            return ready in states and idle in states[states.index(ready) :]

        assert _within(10, closed_after_ready), states  # the server closed it
        assert check(health_pb2.HealthCheckRequest(), timeout=20).status == SERVING


def test_health_watch_ends_at_drain(repo):
    s = ServerThread(repo)
    stopping = threading.Thread(target=s.stop, kwargs={"grace": 600})
    try:
        with grpc.insecure_channel(s.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=60
            )
            assert next(watch).status == SERVING
            stopping.start()
            statuses = []
            with pytest.raises(grpc.RpcError) as exc:
                for reply in watch:
                    statuses.append(reply.status)
            assert statuses and set(statuses) == {NOT_SERVING}
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
            stopping.join(120)
            assert not stopping.is_alive(), "stop() waited for the Watch stream"
    finally:
        if not stopping.ident:
            s.stop()


@pytest.mark.slow
def test_sigterm_with_full_stream_window_watch_and_unary_loses_nothing(tmp_path):
    repo = tmp_path / "repo"
    write_version(repo, "slow-fp32", 1, work=30)
    proc, event = start_cli_server(
        ["--repository", str(repo), "--max-batch-size", "1", "--grace-s", "60"], tmp_path
    )
    address = event["address"]
    frames = random_pixels(40, seed=7)
    pixels = random_pixels(4, seed=8)
    expected = reference(repo / "slow-fp32" / "1", frames)

    def requests():
        for i, frame in enumerate(frames):
            request = cpb.ClassifyRequest(top_k=3, id=f"f{i}")
            request.images.add(pixels=cpb.RawImage(height=8, width=8, data=frame.tobytes()))
            yield request

    with (
        grpc.insecure_channel(address) as channel,
        Client(address, timeout=120) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=120
        )
        assert next(watch).status == SERVING
        unary = [pool.submit(client.infer, "slow-fp32", pixels[i : i + 1]) for i in range(4)]
        while _executions(client) < 1:  # the server holds them: one runs, the others queue
            time.sleep(0.02)
        stream = cpb_grpc.ClassifierStub(channel).ClassifyStream(requests(), timeout=120)
        answers = [next(stream)]  # the stream runs: the server's window is full behind it
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as stream_end:
            answers.extend(stream)
        statuses = []
        with pytest.raises(grpc.RpcError) as watch_end:
            statuses.extend(reply.status for reply in watch)
        results = [f.result(timeout=120) for f in unary]
    assert proc.wait(120) == 0
    # Every frame taken is answered in order: right, or (a frame taken as the drain began)
    # with a clear UNAVAILABLE; the frames never read end the stream with UNAVAILABLE.
    assert stream_end.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in stream_end.value.details()
    assert 1 < len(answers) < len(frames)
    assert [a.id for a in answers] == [f"f{i}" for i in range(len(answers))]
    served = next((i for i, a in enumerate(answers) if a.error), len(answers))
    assert served >= 1
    for i, answer in enumerate(answers[:served]):
        assert answer.results[0].predictions[0].index == int(np.argmax(expected[i]))
    for answer in answers[served:]:
        assert answer.error.startswith("UNAVAILABLE") and "shutting down" in answer.error
    assert statuses == [NOT_SERVING] and watch_end.value.code() == grpc.StatusCode.UNAVAILABLE
    np.testing.assert_allclose(
        np.concatenate(results), reference(repo / "slow-fp32" / "1", pixels), rtol=1e-5
    )
    log = (tmp_path / "serve.log").read_text()
    assert '"msg": "stopped"' in log and "grace period over" not in log


def _executions(client: Client) -> int:
    from tl2edge._proto import grpc_service_pb2 as kpb

    stats = client._kserve.ModelStatistics(kpb.ModelStatisticsRequest())
    return stats.model_stats[0].execution_count
