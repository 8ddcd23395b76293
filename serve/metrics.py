"""What the server counts: Prometheus metrics and the KServe v2 per-model statistics.

Each server gets its own registry, so several servers (tests) can live in one process.
Served as Prometheus text on `--metrics-host`:`--metrics-port` (serve/metrics_http.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from tl2edge.serve.metrics_http import MetricsServer

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The Prometheus side. Label `outcome` is the gRPC status name (OK, INVALID_ARGUMENT, ...)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tl2edge_requests", "Inference requests by API, model and outcome",
            ["api", "model", "outcome"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "tl2edge_request_seconds", "Inference request latency inside the server",
            ["api"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "tl2edge_queue_seconds", "Time a request waited for its batch to start",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute_seconds = Histogram(
            "tl2edge_compute_seconds", "Model execution time per batch",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "tl2edge_batch_size", "Images per model execution", ["model"],
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.inflight = Gauge("tl2edge_inflight_requests", "Requests being served", registry=r)
        self.ready = Gauge("tl2edge_ready", "1 when every model is loaded and warm", registry=r)
        self.model_loaded = Gauge(
            "tl2edge_model_loaded", "Loaded model versions and the execution providers they use",
            ["model", "version", "variant", "providers"], registry=r,
        )  # fmt: skip
        self.model_device = Gauge(
            "tl2edge_model_device", "Device each model version runs on (requested: what "
            "--device said; auto measured the others)", ["model", "version", "device", "requested"],
            registry=r,
        )  # fmt: skip
        self.auto_probe_ms = Gauge(
            "tl2edge_auto_probe_ms", "What --device auto measured at load: ms per run",
            ["model", "version", "device", "batch"], registry=r,
        )  # fmt: skip
        self.model_skipped = Gauge(
            "tl2edge_model_version_skipped",
            "Model versions in the repository that failed to load and are not served",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self._http: MetricsServer | None = None

    def serve(self, host: str, port: int, **security: Any) -> int:
        """Start the /metrics endpoint (TLS, token: see MetricsServer); returns the bound port."""
        from tl2edge.serve.metrics_http import MetricsServer

        self._http = MetricsServer(self.registry, host, port, **security)
        return self._http.port

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class ModelStats:
    """Cumulative statistics of one model version, in KServe v2's terms."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def batch_done(self, size: int, queue_s: list[float], compute_s: float) -> None:
        with self.lock:
            self.execution_count += 1
            self.compute.add(compute_s)
            for q in queue_s:
                self.queue.add(q)
            self.batches.setdefault(size, Duration()).add(compute_s)

    def request_done(self, ok: bool, images: int, seconds: float) -> None:
        with self.lock:
            if ok:
                self.success.add(seconds)
                self.inference_count += images
                self.last_inference_ms = int(time.time() * 1000)
            else:
                self.fail.add(seconds)
