"""The gRPC server: services, health, reflection, TLS, limits, hot reload, graceful drain.

    server, port = await create_server("127.0.0.1:0", "models/", config=ServeConfig())
    await server.start()        # port open at once; health SERVING once models are warm
    ...
    await server.stop()         # NOT_SERVING, refuse new work, finish in-flight, close

grpc.aio (one event loop) rather than a thread-per-RPC server: dynamic batching needs
requests to meet in one queue, an asyncio queue does that without locks, and the model
runs on its own threads so the loop stays free to parse, validate and answer requests
while a batch computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tl2edge._proto import classifier_pb2, classifier_pb2_grpc, grpc_service_pb2
from tl2edge._proto import grpc_service_pb2_grpc as kserve_grpc
from tl2edge.errors import UserError
from tl2edge.serve.auth import TokenAuth
from tl2edge.serve.classifier import ClassifierServicer
from tl2edge.serve.config import RuntimeConfig, ServeConfig
from tl2edge.serve.dataplane import DataPlane
from tl2edge.serve.health import DrainingHealthServicer
from tl2edge.serve.kserve import KServeServicer
from tl2edge.serve.metrics import Metrics
from tl2edge.serve.modelcontrol import ModelControl
from tl2edge.serve.priority import lower_request_threads, restore_threads, spawner
from tl2edge.serve.providers import publish_selections
from tl2edge.serve.reflection import enable_reflection
from tl2edge.serve.repository import ModelRepository
from tl2edge.serve.wire import ScreenInferRequests

log = logging.getLogger("tl2edge.serve")

KSERVE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{what} {path}: {exc.strerror}") from exc


def _credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    key = _read(config.tls_key, "--tls-key")  # type: ignore[arg-type]
    cert = _read(config.tls_cert, "--tls-cert")
    ca = _read(config.tls_client_ca, "--tls-client-ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class Server:
    """One serving process: gRPC services + metrics + model repository."""

    def __init__(
        self,
        grpc_server: grpc.aio.Server,
        plane: DataPlane,
        health_servicer: DrainingHealthServicer,
        config: ServeConfig,
        address: str,
        port: int,
    ) -> None:
        self.grpc = grpc_server
        self.plane = plane
        self.health = health_servicer
        self.config = config
        self.address = address
        self.port = port
        self.metrics_port: int | None = None
        self.started_at = time.monotonic()
        self._reloader: asyncio.Task | None = None
        self._lowered: list[int] = []  # threads lowered at start (serve/priority.py)
        self._known_models: set[str] = set()
        self._stopped = asyncio.Event()

    @property
    def repository(self) -> ModelRepository:
        return self.plane.repository

    async def start(self) -> None:
        """Open the port (health NOT_SERVING), load and warm every model, then SERVING."""
        if self.config.metrics_port is not None:  # first: a busy port stops us before gRPC
            self.metrics_port = self.plane.metrics.serve(
                self.config.metrics_host,
                self.config.metrics_port,
                tls_cert=self.config.tls_cert,
                tls_key=self.config.tls_key,
                tls_client_ca=self.config.tls_client_ca,
                token=self.config.auth_token,
            )
        await self.grpc.start()
        try:
            await self.repository.load_all()
        except BaseException:
            await self.grpc.stop(0)
            self.plane.metrics.close()
            raise
        self._publish_models(self.repository)
        self._known_models = self.repository.served_names()
        # Threads that run the model exist now, or will be started by the spawner.
        self._lowered = lowered = lower_request_threads(self.config.request_nice)
        self.plane.ready = True
        self.plane.metrics.ready.set(1)
        await self._set_health(SERVING)
        if self.config.model_control_mode == "poll":
            self._reloader = asyncio.get_running_loop().create_task(self._reload_forever())
        log.info(
            "serving",
            extra={
                "address": f"{self.address.rsplit(':', 1)[0]}:{self.port}",
                "model_control": self.config.model_control_mode,
                "models": ", ".join(str(m) for m in self.repository.all()),
                "tls": "mutual" if self.config.tls_client_ca else bool(self.config.tls_cert),
                "auth": bool(self.config.auth_token),
                "metrics_port": self.metrics_port,
                "max_batch_size": self.repository.batching.max_batch_size,
                "request_threads_lowered": len(lowered),
                "startup_s": round(time.monotonic() - self.started_at, 3),
                "pid": os.getpid(),
            },
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new requests (UNAVAILABLE), finish in-flight ones."""
        if self._stopped.is_set():
            return
        grace = self.config.grace_s if grace is None else grace
        deadline = time.monotonic() + grace
        log.info("draining", extra={"inflight": self.plane.inflight, "grace_s": grace})
        self.plane.draining = True
        self.plane.metrics.ready.set(0)
        await self.health.enter_graceful_shutdown()  # also ends health Watch streams
        if self._reloader:
            self._reloader.cancel()
        finished = await self.plane.wait_idle(grace)
        await self.grpc.stop(max(0.0, deadline - time.monotonic()))
        await self.repository.close()
        self.plane.close()
        self.plane.metrics.close()
        restore_threads(self._lowered)
        self._stopped.set()
        log.info(
            "stopped" if finished else "stopped; grace period over with requests unfinished",
            extra={"inflight": self.plane.inflight},
        )

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()

    async def _set_health(self, status: int) -> None:
        await self.health.set("", status)
        for service in (KSERVE_SERVICE, CLASSIFIER_SERVICE):
            await self.health.set(service, status)
        for name in self.repository.served_names():
            await self.health.set(name, status)

    def _publish_models(self, repo: ModelRepository) -> None:
        gauge = self.plane.metrics.model_loaded
        gauge.clear()
        for m in repo.all():
            gauge.labels(m.name, str(m.version), m.manifest.variant, ",".join(m.providers)).set(1)
        publish_selections(self.plane.metrics, repo.all())
        skipped = self.plane.metrics.model_skipped
        skipped.clear()
        for name, version in repo.skipped:
            skipped.labels(name, str(version)).set(1)

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval_s)
            try:
                changes = await self.repository.refresh()
            except Exception:  # keep serving what is loaded
                log.exception("model reload failed")
                continue
            self._publish_models(self.repository)  # also versions that just failed
            if changes:
                await self._models_changed()

    async def _models_changed(self) -> None:
        """After a reload, load or unload: metrics and per-model health follow the models."""
        self._publish_models(self.repository)
        current = self.repository.served_names()
        status = NOT_SERVING if self.plane.draining else SERVING
        for name in current:
            await self.health.set(name, status)
        for name in self._known_models - current:
            await self.health.set(name, NOT_SERVING)
        self._known_models = current


async def create_server(
    address: str,
    source: str | os.PathLike,
    *,
    config: ServeConfig | None = None,
    runtime: RuntimeConfig | None = None,
) -> tuple[Server, int]:
    """Build the server and bind `address` ("127.0.0.1:0" picks a free port); not started."""
    config = config or ServeConfig()
    spawner()  # before any thread of this process is lowered (serve/priority.py)
    repository = ModelRepository(
        source,
        runtime=runtime or RuntimeConfig(),
        policy=config.version_policy,
        batching=config.batching,
    )
    metrics = Metrics()
    repository.observers.append(
        lambda m, size, queue_s, compute_s: _observe(metrics, m.name, size, queue_s, compute_s)
    )
    plane = DataPlane(
        repository,
        metrics=metrics,
        max_concurrent_requests=config.max_concurrent_requests,
        default_model=config.default_model,
        max_inflight_mb=config.max_inflight_mb,
        max_image_pixels=config.max_image_pixels,
        large_image_pixels=config.large_image_pixels,
        large_image_queue=config.large_image_queue,
    )
    plane.control = ModelControl(repository, config.model_control_mode)
    plane.control.select_startup_models(config.load_models)
    limit = config.max_message_mb * 1024 * 1024
    server = grpc.aio.server(
        interceptors=[
            *([TokenAuth(config.auth_token)] if config.auth_token else []),
            ScreenInferRequests(plane.get),
        ],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
            *config.connections.options(),
        ],
    )
    kserve_grpc.add_GRPCInferenceServiceServicer_to_server(KServeServicer(plane), server)
    classifier_pb2_grpc.add_ClassifierServicer_to_server(ClassifierServicer(plane), server)
    health_servicer = DrainingHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", NOT_SERVING)
    enable_reflection(
        server,
        [
            KSERVE_SERVICE,
            CLASSIFIER_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        ],
    )
    credentials = _credentials(config)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise UserError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise UserError(f"cannot listen on {address} (in use, or not a local address)")
    served = Server(server, plane, health_servicer, config, address, port)
    plane.control.on_change = served._models_changed
    return served, port


def _observe(
    metrics: Metrics, model: str, size: int, queue_s: list[float], compute_s: float
) -> None:
    metrics.batch_size.labels(model).observe(size)
    metrics.compute_seconds.labels(model).observe(compute_s)
    for q in queue_s:
        metrics.queue_seconds.labels(model).observe(q)


@contextlib.asynccontextmanager
async def running(address: str, source: str | os.PathLike, **kwargs):  # type: ignore[no-untyped-def]
    """`async with running("127.0.0.1:0", repo) as server:` -> started server, stopped after."""
    server, _ = await create_server(address, source, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=5)
