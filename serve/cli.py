"""`tl2edge serve`: serve a model repository (or one model) over gRPC until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

# Light modules (no grpc, no onnxruntime): every default below comes from these dataclasses.
from tl2edge.cli import field_default
from tl2edge.serve.config import (
    ARENA_STRATEGIES,
    DEVICES,
    GRAPH_OPTIMIZATIONS,
    MODES,
    OPENVINO_PRECISIONS,
    BatchConfig,
    RuntimeConfig,
    ServeConfig,
    VersionPolicy,
)
from tl2edge.serve.connections import ConnectionConfig

log = logging.getLogger("tl2edge.serve")


# ConnectionConfig field -> (default, help); the default is the dataclass's.
CONNECTION_FLAGS = {
    name: (field_default(ConnectionConfig, name), text)
    for name, text in {
        "keepalive_s": "ping a silent connection after N s (default %(default)g)",
        "keepalive_timeout_s": "close it if the ping is unanswered for N s (default %(default)g)",
        "min_client_ping_s": "clients may send keepalive pings this often (default %(default)g)",
        "max_connection_age_s": "ask clients to reconnect after N s, so load spreads to new "
        "replicas (default %(default)g; 0 = never)",
        "max_connection_age_grace_s": "then close the connection after N s even with open "
        "streams (default %(default)g; 0 = never)",
        "max_connection_idle_s": "close connections without calls for N s "
        "(default %(default)g; 0 = never)",
        "max_concurrent_streams": "concurrent RPCs per connection (default %(default)s)",
    }.items()
}


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
        default=str(VersionPolicy()),
        metavar="POLICY",
        help="versions to serve: latest, all, or numbers like 1,3 (default %(default)s)",
    )
    p.add_argument(
        "--default-model",
        help="model used when a Classify request names none (default: the only model)",
    )
    net = p.add_argument_group("network")
    net.add_argument(
        "--host",
        default="0.0.0.0",
        help="gRPC address to listen on (default 0.0.0.0; :: or [::] for IPv6 and IPv4)",
    )
    net.add_argument(
        "--port", type=int, default=8500, help="gRPC port (default 8500; 0 = any free port)"
    )
    net.add_argument(
        "--metrics-port",
        type=int,
        default=8501,
        help="Prometheus /metrics port (default 8501; -1 = off); TLS and token as the gRPC API",
    )
    net.add_argument(
        "--metrics-host",
        default=field_default(ServeConfig, "metrics_host"),
        help="address of /metrics (default %(default)s, this machine only; 0.0.0.0 or :: to scrape "
        "from elsewhere)",
    )
    net.add_argument(
        "--max-message-mb",
        type=int,
        default=field_default(ServeConfig, "max_message_mb"),
        help="largest request or response (default %(default)s)",
    )
    net.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=field_default(ServeConfig, "max_concurrent_requests"),
        help="beyond this, RESOURCE_EXHAUSTED (default %(default)s)",
    )
    conn = p.add_argument_group("connections")
    for dest, (default, text) in CONNECTION_FLAGS.items():
        flag = "--" + dest.replace("_", "-")
        conn.add_argument(flag, type=type(default), default=default, help=text)
    add_limit_arguments(p)
    dev = p.add_argument_group("runtime")
    dev.add_argument(
        "--device",
        default=field_default(RuntimeConfig, "device"),
        choices=DEVICES,
        help="execution provider (default %(default)s: measure each available one at load, keep "
        "the fastest; TensorRT only when asked)",
    )
    dev.add_argument(
        "--intra-op-threads",
        type=int,
        default=field_default(RuntimeConfig, "intra_op_threads"),
        help="threads per model run (default %(default)s = one per core)",
    )
    dev.add_argument(
        "--inter-op-threads",
        type=int,
        default=field_default(RuntimeConfig, "inter_op_threads"),
        help="threads across graph branches (default %(default)s = ORT's choice)",
    )
    dev.add_argument(
        "--graph-optimization",
        default=field_default(RuntimeConfig, "graph_optimization"),
        choices=GRAPH_OPTIMIZATIONS,
    )
    dev.add_argument(
        "--cuda-device-id", type=int, default=field_default(RuntimeConfig, "cuda_device_id")
    )
    dev.add_argument(
        "--cuda-mem-limit-mb",
        type=int,
        default=field_default(RuntimeConfig, "cuda_mem_limit_mb"),
        help="CUDA arena limit (default %(default)s = none)",
    )
    dev.add_argument(
        "--cuda-arena-extend-strategy",
        default=field_default(RuntimeConfig, "cuda_arena_extend_strategy"),
        choices=ARENA_STRATEGIES,
    )
    add_openvino_arguments(dev)
    bat = p.add_argument_group("dynamic batching")
    bat.add_argument(
        "--max-batch-size",
        type=int,
        default=field_default(BatchConfig, "max_batch_size"),
        help="images per model run (default %(default)s)",
    )
    bat.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=field_default(BatchConfig, "max_batch_delay_ms"),
        help="wait this long for a batch to fill (default %(default)g: batch what is queued)",
    )
    bat.add_argument(
        "--instances",
        type=int,
        default=field_default(BatchConfig, "instances"),
        help="concurrent model runs per model version (default %(default)s)",
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
        help="require 'authorization: Bearer <token>' on every RPC but health, and on /metrics",
    )
    ops = p.add_argument_group("operations")
    ops.add_argument(
        "--grace-s",
        type=float,
        default=field_default(ServeConfig, "grace_s"),
        help="on SIGTERM, time for in-flight requests (default %(default)g)",
    )
    ops.add_argument(
        "--reload-interval-s",
        type=float,
        default=field_default(ServeConfig, "reload_interval_s"),
        help="poll REPO for new versions every N s (default %(default)g = off; implies "
        "--model-control-mode poll)",
    )
    ops.add_argument(
        "--model-control-mode",
        choices=MODES,
        default=field_default(ServeConfig, "model_control_mode"),
        help="as Triton: none = the start-up models until exit; poll = reload from REPO every "
        "--reload-interval-s; explicit = only RepositoryModelLoad/Unload RPCs change models "
        "(default: poll if --reload-interval-s is set, else none)",
    )
    ops.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: load this model at start-up (repeatable; default: every model)",
    )


def add_openvino_arguments(group) -> None:  # type: ignore[no-untyped-def]
    """The OpenVINO options, shared with bench and evaluate (argparse only, no imports)."""
    group.add_argument(
        "--openvino-precision",
        default=field_default(RuntimeConfig, "openvino_precision"),
        choices=OPENVINO_PRECISIONS,
        help="OpenVINO inference precision (default %(default)s: no bf16/fp16 down-conversion)",
    )
    group.add_argument(
        "--openvino-streams",
        type=int,
        default=field_default(RuntimeConfig, "openvino_streams"),
        help="OpenVINO streams (default %(default)s: its own)",
    )
    group.add_argument(
        "--openvino-threads",
        type=int,
        default=field_default(RuntimeConfig, "openvino_threads"),
        help="OpenVINO threads (default %(default)s: its own)",
    )
    group.add_argument(
        "--openvino-cache-dir",
        default=field_default(RuntimeConfig, "openvino_cache_dir"),
        help="keep compiled OpenVINO models here so the next start is fast",
    )
    group.add_argument(
        "--auto-cache-dir",
        default=field_default(RuntimeConfig, "auto_cache_dir"),
        help="--device auto keeps its measurements per model file here; the next start "
        "opens only the chosen provider",
    )


def openvino_config(args: argparse.Namespace) -> dict:
    """RuntimeConfig keyword arguments from the OpenVINO flags."""
    return {
        "openvino_precision": args.openvino_precision,
        "openvino_streams": args.openvino_streams,
        "openvino_threads": args.openvino_threads,
        "openvino_cache_dir": args.openvino_cache_dir,
        "auto_cache_dir": args.auto_cache_dir,
    }


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    lim = p.add_argument_group("memory limits")
    lim.add_argument(
        "--max-inflight-mb",
        type=int,
        default=field_default(ServeConfig, "max_inflight_mb"),
        help="request bytes (messages and decoded pixels) held at once; beyond it, "
        "RESOURCE_EXHAUSTED (default %(default)s)",
    )
    lim.add_argument(
        "--max-image-pixels",
        type=int,
        default=field_default(ServeConfig, "max_image_pixels"),
        help="largest width x height of an encoded image, checked from its header before "
        "decoding; larger: INVALID_ARGUMENT (default %(default)s)",
    )
    lim.add_argument(
        "--large-image-pixels",
        type=int,
        default=field_default(ServeConfig, "large_image_pixels"),
        help="a request whose images declare more pixels than this in total is decoded on a "
        "separate one-thread, low-priority lane, so it cannot delay small images "
        "(default %(default)s)",
    )
    lim.add_argument(
        "--large-image-queue",
        type=int,
        default=field_default(ServeConfig, "large_image_queue"),
        help="requests with large images that may wait for that lane; beyond it, "
        "RESOURCE_EXHAUSTED (default %(default)s)",
    )
    lim.add_argument(
        "--request-nice",
        type=int,
        default=field_default(ServeConfig, "request_nice"),
        help="niceness steps the threads that receive and answer requests run below the ones "
        "that run the model and decode images, so a flood of requests cannot starve the "
        "requests being served (Linux; 0: same priority; default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    # Heavy imports only when serving for real.
    from tl2edge.serve.auth import read_token
    from tl2edge.serve.connections import address_family, host_port

    # Each config checks itself and raises UserError (`error: ...`, exit 2).
    runtime = RuntimeConfig(
        device=args.device,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        graph_optimization=args.graph_optimization,
        cuda_device_id=args.cuda_device_id,
        cuda_mem_limit_mb=args.cuda_mem_limit_mb,
        cuda_arena_extend_strategy=args.cuda_arena_extend_strategy,
        probe_max_batch=max(1, args.max_batch_size),
        **openvino_config(args),
    )
    config = ServeConfig(
        batching=BatchConfig(args.max_batch_size, args.max_batch_delay_ms, args.instances),
        version_policy=VersionPolicy.parse(args.model_version),
        default_model=args.default_model,
        max_message_mb=args.max_message_mb,
        max_concurrent_requests=args.max_concurrent_requests,
        max_inflight_mb=args.max_inflight_mb,
        max_image_pixels=args.max_image_pixels,
        large_image_pixels=args.large_image_pixels,
        large_image_queue=args.large_image_queue,
        request_nice=args.request_nice,
        grace_s=args.grace_s,
        reload_interval_s=args.reload_interval_s,
        model_control_mode=args.model_control_mode,
        load_models=tuple(args.load_model),
        connections=ConnectionConfig(**{d: getattr(args, d) for d in CONNECTION_FLAGS}),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_token=read_token(args.auth_token_file) if args.auth_token_file else None,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        metrics_host=args.metrics_host,
    )
    if args.reload_interval_s and args.model:
        log.warning("--reload-interval-s watches the --model path for new or changed versions")
    address_family(args.host, args.port, flag="--host")  # one clear line, before grpc's own
    address = host_port(args.host, args.port)
    # A missing device raises DeviceUnavailable, a UserError: `error: ...`, exit 2.
    return asyncio.run(serve(address, args.repository or args.model, config, runtime))


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
