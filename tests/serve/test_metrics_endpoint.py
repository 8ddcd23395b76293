"""The /metrics endpoint and listen addresses: loopback by default, IPv6, one clear line
for a busy port or a bad host. TLS and the bearer token: test_security.py.

Run: .venv/bin/pytest tests/serve/test_metrics_endpoint.py -q
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tl2edge.cli import build_parser, main
from tl2edge.serve.connections import host_port
from tl2edge.serve.server import ServeConfig, create_server


def _scrape(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def test_metrics_listen_on_loopback_unless_told():
    args = build_parser("serve").parse_args(["serve", "--repository", "r"])
    assert args.metrics_host == "127.0.0.1" and args.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("host", "expected"),
    [("::", "[::]:1"), ("[::]", "[::]:1"), ("::1", "[::1]:1"), ("0.0.0.0", "0.0.0.0:1")],
)
def test_host_port_brackets_ipv6(host, expected):
    assert host_port(host, 1) == expected


@pytest.mark.parametrize("host", ["::", "[::]"])
def test_ipv6_hosts_serve_grpc_and_metrics_to_both_families(repo, host):
    async def scenario() -> list[int]:
        config = ServeConfig(metrics_port=0, metrics_host=host)
        server, port = await create_server(host_port(host, 0), repo, config=config)
        await server.start()
        try:
            statuses = []
            for address in (f"[::1]:{port}", f"127.0.0.1:{port}"):
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                    statuses.append(reply.status)
            for host_ in ("[::1]", "127.0.0.1"):
                url = f"http://{host_}:{server.metrics_port}/metrics"
                body = await asyncio.to_thread(_scrape, url)
                assert b"tl2edge_ready 1.0" in body
            return statuses
        finally:
            await server.stop(grace=5)

    assert asyncio.run(scenario()) == [health_pb2.HealthCheckResponse.SERVING] * 2


def _serve(repo, *flags: str) -> list[str]:  # type: ignore[no-untyped-def]
    return ["serve", "--repository", str(repo), "--host", "127.0.0.1", "--port", "0", *flags]


def test_busy_metrics_port_is_one_clear_line(repo, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(_serve(repo, "--metrics-port", str(port)))
    err = capsys.readouterr().err
    assert code != 0
    assert f"error: metrics port {port} on 127.0.0.1 is in use" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("host", ["no-such-host.invalid", "[::1"])
def test_bad_metrics_host_is_one_clear_line(repo, capsys, host):
    code = main(_serve(repo, "--metrics-port", "0", "--metrics-host", host))
    err = capsys.readouterr().err
    assert code != 0
    assert f"error: --metrics-host {host!r} is not an address" in err
    assert "Traceback" not in err


def test_busy_grpc_port_is_one_clear_line(repo, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = _serve(repo, "--metrics-port", "-1")
        args[args.index("--port") + 1] = str(port)
        code = main(args)
    err = capsys.readouterr().err
    assert code != 0 and "error: cannot listen on 127.0.0.1:" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("host", ["no-such-host.invalid", "[::1"])
def test_bad_grpc_host_is_one_clear_line(repo, capsys, host):
    args = _serve(repo, "--metrics-port", "-1")
    args[args.index("--host") + 1] = host
    code = main(args)
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith(f"error: --host {host!r} is not an address") and err.count("\n") == 1
