"""The serving configuration: plain dataclasses that check themselves.

Kept free of grpc and onnxruntime so that `tl2edge serve --help` can take every flag's
default from here. Each class raises `UserError` naming the value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tl2edge.errors import UserError
from tl2edge.serve.connections import ConnectionConfig

DEVICES = ("auto", "cpu", "openvino", "cuda", "tensorrt")
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
ARENA_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")
OPENVINO_PRECISIONS = ("FP32", "FP16", "ACCURACY")
MODES = ("none", "poll", "explicit")  # model control modes, as Triton's
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000  # a 25 MP photo; far above any classifier's input
DEFAULT_MAX_INFLIGHT_MB = 256
# A request whose images declare more pixels than this in total is decoded on its own
# one-thread lane, so a few big photos cannot hold up the many small ones; 4 MP is ~80x a
# 224x224 model input. At most this many such requests wait behind the one decoding.
DEFAULT_LARGE_IMAGE_PIXELS = 4_000_000
DEFAULT_LARGE_IMAGE_QUEUE = 4
# Niceness steps the request-handling threads run below the model's (serve/priority.py).
DEFAULT_REQUEST_NICE = 5


def _one_of(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{what} {value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class RuntimeConfig:
    """How sessions are created. 0 threads/streams = the runtime's own default."""

    device: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"
    cuda_device_id: int = 0
    cuda_mem_limit_mb: int = 0  # 0 = no limit
    cuda_arena_extend_strategy: str = "kNextPowerOfTwo"
    # FP32 keeps fp32 math (no bf16 on AMX CPUs); ACCURACY keeps the model's own precision.
    openvino_precision: str = "FP32"
    openvino_streams: int = 0
    openvino_threads: int = 0
    openvino_cache_dir: str = ""
    probe_max_batch: int = 8  # the largest batch `auto` times (serve: --max-batch-size)
    auto_cache_dir: str = ""  # where `auto` keeps its measurements per model file

    def __post_init__(self) -> None:
        _one_of("device", self.device, DEVICES)
        _one_of("graph optimization", self.graph_optimization, GRAPH_OPTIMIZATIONS)
        _one_of("CUDA arena strategy", self.cuda_arena_extend_strategy, ARENA_STRATEGIES)
        _one_of("OpenVINO precision", self.openvino_precision, OPENVINO_PRECISIONS)
        counts = {
            "intra-op threads": self.intra_op_threads,
            "inter-op threads": self.inter_op_threads,
            "CUDA memory limit": self.cuda_mem_limit_mb,
            "OpenVINO streams": self.openvino_streams,
            "OpenVINO threads": self.openvino_threads,
        }
        negative = [f"{name} {value}" for name, value in counts.items() if value < 0]
        if negative:
            raise UserError(
                f"{', '.join(negative)}: thread and stream counts and the CUDA memory limit "
                "must be >= 0 (0 = the runtime's default)"
            )
        if self.probe_max_batch < 1:
            raise UserError(f"probe batch size ({self.probe_max_batch}) must be at least 1")

    def __str__(self) -> str:
        return (
            f"device={self.device} threads={self.intra_op_threads or 'auto'}/"
            f"{self.inter_op_threads or 'auto'} opt={self.graph_optimization}"
        )


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 8
    max_batch_delay_ms: float = 0.0
    instances: int = 1  # concurrent model executions per model version

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise UserError(
                f"max batch size ({self.max_batch_size}) must be at least 1 (--max-batch-size)"
            )
        if self.max_batch_delay_ms < 0:
            raise UserError(
                f"max batch delay ({self.max_batch_delay_ms} ms) must be >= 0 "
                "(--max-batch-delay-ms)"
            )
        if self.instances < 1:
            raise UserError(f"instances ({self.instances}) must be at least 1 (--instances)")


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of each model to serve: `latest`, `all`, or specific numbers `1,3`."""

    kind: str = "latest"
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        text = text.strip().lower()
        if text in ("latest", "all"):
            return cls(text)
        try:
            versions = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
        except ValueError:
            versions = ()
        if not versions or min(versions) < 1:
            raise UserError(
                f"version policy {text!r}: use 'latest', 'all' or version numbers like '1,3'"
            )
        return cls("specific", versions)

    def select(self, available: list[int]) -> list[int]:
        if self.kind == "all":
            return list(available)
        if self.kind == "latest":
            return available[-1:]
        return [v for v in available if v in self.versions]

    def __str__(self) -> str:
        return self.kind if self.kind != "specific" else ",".join(map(str, self.versions))


@dataclass(frozen=True)
class ServeConfig:
    """Everything about serving except the models and the runtime."""

    batching: BatchConfig = field(default_factory=BatchConfig)
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    default_model: str | None = None
    max_message_mb: int = 64
    max_concurrent_requests: int = 256
    max_inflight_mb: int = DEFAULT_MAX_INFLIGHT_MB
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    large_image_pixels: int = DEFAULT_LARGE_IMAGE_PIXELS
    large_image_queue: int = DEFAULT_LARGE_IMAGE_QUEUE
    request_nice: int = DEFAULT_REQUEST_NICE
    grace_s: float = 30.0
    reload_interval_s: float = 0.0  # poll interval of --model-control-mode poll
    model_control_mode: str = ""  # none|poll|explicit; "": poll if reload_interval_s else none
    load_models: tuple[str, ...] = ()  # explicit mode: served from start-up (empty: all)
    connections: ConnectionConfig = field(default_factory=ConnectionConfig)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed
    auth_token: str | None = None
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        at_least_one = {
            "--max-message-mb": self.max_message_mb,
            "--max-concurrent-requests": self.max_concurrent_requests,
            "--max-inflight-mb": self.max_inflight_mb,
            "--max-image-pixels": self.max_image_pixels,
            "--large-image-pixels": self.large_image_pixels,
        }
        for flag, value in at_least_one.items():
            if value < 1:
                raise UserError(f"{flag} {value}: must be at least 1")
        if self.large_image_queue < 0:
            raise UserError(f"--large-image-queue {self.large_image_queue}: must be at least 0")
        if not 0 <= self.request_nice <= 19:
            raise UserError(f"--request-nice {self.request_nice}: must be from 0 to 19")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise UserError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca and not self.tls_cert:
            raise UserError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key too")
        if self.grace_s < 0 or self.reload_interval_s < 0:
            raise UserError(
                f"--grace-s {self.grace_s:g}, --reload-interval-s {self.reload_interval_s:g}: "
                "grace and reload interval must be >= 0 seconds"
            )
        object.__setattr__(self, "model_control_mode", self._control_mode())

    def _control_mode(self) -> str:
        mode = self.model_control_mode or ("poll" if self.reload_interval_s > 0 else "none")
        if mode not in MODES:
            raise UserError(f"--model-control-mode {mode!r}: use one of {', '.join(MODES)}")
        if mode == "poll" and not self.reload_interval_s:
            raise UserError("--model-control-mode poll needs --reload-interval-s N (> 0)")
        if mode != "poll" and self.reload_interval_s:
            raise UserError(
                f"--reload-interval-s polls the repository: it goes with --model-control-mode "
                f"poll, not {mode}"
            )
        if self.load_models and mode != "explicit":
            raise UserError("--load-model needs --model-control-mode explicit")
        return mode
