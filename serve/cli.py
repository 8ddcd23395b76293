"""`tl2edge serve`: serve a model repository (or one model) over gRPC until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from tl2edge.errors import UserError

log = logging.getLogger("tl2edge.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Only argparse here: `tl2edge serve --help` must not import grpc or onnxruntime.
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--repository",
        type=Path,
        metavar="REPO",
        help="REPO/<model>/<version>/model.onnx + manifest.json",
    )
    src.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="one model: a version folder, a model folder or an .onnx file",
    )
    p.add_argument(
        "--model-version",
        default="latest",
        metavar="POLICY",
        help="versions to serve: latest (default), all, or numbers like 1,3",
    )
    p.add_argument(
        "--default-model",
        help="model used when a Classify request names none (default: the only model)",
    )
    net = p.add_argument_group("network")
    net.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0; [::] for IPv6)"
    )
    net.add_argument(
        "--port", type=int, default=8500, help="gRPC port (default 8500; 0 = any free port)"
    )
    net.add_argument(
        "--metrics-port",
        type=int,
        default=8501,
        help="Prometheus /metrics port (default 8501; -1 = off)",
    )
    net.add_argument(
        "--max-message-mb", type=int, default=64, help="largest request or response (default 64)"
    )
    net.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=256,
        help="beyond this, RESOURCE_EXHAUSTED (default 256)",
    )
    add_limit_arguments(p)
    dev = p.add_argument_group("runtime")
    dev.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "tensorrt"],
        help="execution provider (default auto: CUDA if usable, else CPU)",
    )
    dev.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="threads per model run (default 0 = one per core)",
    )
    dev.add_argument(
        "--inter-op-threads",
        type=int,
        default=0,
        help="threads across graph branches (default 0 = ORT's choice)",
    )
    dev.add_argument(
        "--graph-optimization", default="all", choices=["disable", "basic", "extended", "all"]
    )
    dev.add_argument("--cuda-device-id", type=int, default=0)
    dev.add_argument(
        "--cuda-mem-limit-mb", type=int, default=0, help="CUDA arena limit (default 0 = none)"
    )
    dev.add_argument(
        "--cuda-arena-extend-strategy",
        default="kNextPowerOfTwo",
        choices=["kNextPowerOfTwo", "kSameAsRequested"],
    )
    bat = p.add_argument_group("dynamic batching")
    bat.add_argument(
        "--max-batch-size", type=int, default=8, help="images per model run (default 8)"
    )
    bat.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=0.0,
        help="wait this long for a batch to fill (default 0: batch what is queued)",
    )
    bat.add_argument(
        "--instances",
        type=int,
        default=1,
        help="concurrent model runs per model version (default 1)",
    )
    sec = p.add_argument_group("security")
    sec.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    sec.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    sec.add_argument(
        "--tls-client-ca",
        type=Path,
        help="require client certificates signed by this CA (mutual TLS)",
    )
    sec.add_argument(
        "--auth-token-file",
        type=Path,
        help="require 'authorization: Bearer <token>' on every RPC but health",
    )
    ops = p.add_argument_group("operations")
    ops.add_argument(
        "--grace-s",
        type=float,
        default=30.0,
        help="on SIGTERM, time for in-flight requests (default 30)",
    )
    ops.add_argument("--reload-interval-s", type=float, default=0.0, help="poll REPO for new versions every N s (default 0 = off)")  # fmt: skip


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    # Defaults live in tl2edge.serve.limits, which imports grpc: repeated here as literals
    # (a test checks they agree) so that --help stays light.
    lim = p.add_argument_group("memory limits")
    lim.add_argument(
        "--max-inflight-mb",
        type=int,
        default=256,
        help="request bytes (messages and decoded pixels) held at once; beyond it, "
        "RESOURCE_EXHAUSTED (default 256)",
    )
    lim.add_argument(
        "--max-image-pixels",
        type=int,
        default=25_000_000,
        help="largest width x height of an encoded image, checked from its header before "
        "decoding; larger: INVALID_ARGUMENT (default 25000000)",
    )


def run(args: argparse.Namespace) -> int:
    # Heavy imports only when serving for real.
    from tl2edge.serve.auth import read_token
    from tl2edge.serve.batching import BatchConfig
    from tl2edge.serve.errors import DeviceUnavailable
    from tl2edge.serve.repository import VersionPolicy
    from tl2edge.serve.runtime import RuntimeConfig
    from tl2edge.serve.server import ServeConfig

    try:
        runtime = RuntimeConfig(
            device=args.device,
            intra_op_threads=args.intra_op_threads,
            inter_op_threads=args.inter_op_threads,
            graph_optimization=args.graph_optimization,
            cuda_device_id=args.cuda_device_id,
            cuda_mem_limit_mb=args.cuda_mem_limit_mb,
            cuda_arena_extend_strategy=args.cuda_arena_extend_strategy,
        )
        config = ServeConfig(
            batching=BatchConfig(args.max_batch_size, args.max_batch_delay_ms, args.instances),
            version_policy=VersionPolicy.parse(args.model_version),
            default_model=args.default_model,
            max_message_mb=args.max_message_mb,
            max_concurrent_requests=args.max_concurrent_requests,
            max_inflight_mb=args.max_inflight_mb,
            max_image_pixels=args.max_image_pixels,
            grace_s=args.grace_s,
            reload_interval_s=args.reload_interval_s,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            auth_token=read_token(args.auth_token_file) if args.auth_token_file else None,
            metrics_port=None if args.metrics_port < 0 else args.metrics_port,
            metrics_host=args.host,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.reload_interval_s and args.model:
        log.warning("--reload-interval-s watches the --model path for new or changed versions")
    address = f"{args.host}:{args.port}"
    try:
        return asyncio.run(serve(address, args.repository or args.model, config, runtime))
    except DeviceUnavailable as exc:
        raise UserError(str(exc)) from exc


async def serve(address: str, source: Path, config, runtime) -> int:  # type: ignore[no-untyped-def]
    """Serve until SIGTERM/SIGINT, then drain; 0 on a clean stop."""
    from tl2edge.serve.server import create_server

    server, _port = await create_server(address, source, config=config, runtime=runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(server.start())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # signal while loading: stop loading, exit cleanly
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        log.info("stopped during start-up")
        return 0
    starting.result()  # start-up errors (bad model, missing device) end here
    await stopper
    await server.stop()
    return 0
