"""ONNX Runtime sessions with an execution-provider policy, and latency/throughput measurement.

Device semantics are the server's: `cpu` runs on CPU; `cuda` / `tensorrt` fail with a clear
message when the provider is missing or does not load; `auto` uses CUDA when it is there and
otherwise falls back to CPU with one warning. What a session really got is read back from
`session.get_providers()`, never assumed from what was asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tl2edge.errors import UserError

log = logging.getLogger("tl2edge.export")

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_REQUIRED = {"cuda": CUDA, "tensorrt": TENSORRT}


def plan_providers(device: str, available: Sequence[str]) -> list[str]:
    """Providers to ask ORT for, in priority order; UserError when an explicit GPU device is
    not available in this onnxruntime build."""
    if device not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return [CPU]
    if device == "auto":
        if CUDA in available:
            return [CUDA, CPU]
        log.warning(
            "--device auto: no CUDA execution provider in this onnxruntime (available: %s); "
            "running on CPU",
            ", ".join(available),
        )
        return [CPU]
    needed = _REQUIRED[device]
    if needed not in available:
        raise UserError(
            f"--device {device}: onnxruntime has no {needed} (available: {', '.join(available)}). "
            "Install onnxruntime-gpu (pip install 'tl2edge[gpu]', then uninstall onnxruntime) "
            "on a machine with an NVIDIA GPU, or use --device cpu"
        )
    return [TENSORRT, CUDA, CPU] if device == "tensorrt" else [CUDA, CPU]


def check_providers(device: str, requested: Sequence[str], got: Sequence[str]) -> None:
    """After creating a session: an explicit GPU device must really be in use (ORT silently
    drops a provider whose libraries fail to load); `auto` falls back with a warning."""
    if device in _REQUIRED and _REQUIRED[device] not in got:
        raise UserError(
            f"--device {device}: {_REQUIRED[device]} is installed but did not load "
            f"(the session got {', '.join(got)}); check the CUDA/cuDNN/TensorRT libraries "
            "and the driver, or use --device cpu"
        )
    dropped = [p for p in requested if p not in got]
    if device == "auto" and dropped:
        log.warning(
            "--device auto: %s did not load; running on %s", ", ".join(dropped), ", ".join(got)
        )


def make_session(path: str | Path, *, device: str = "cpu", threads: int = 0) -> Any:
    """An InferenceSession on `device`; `threads` = intra-op threads (0: ORT's default)."""
    import onnxruntime as ort

    providers = plan_providers(device, ort.get_available_providers())
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, threads)
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=providers)
    check_providers(device, providers, session.get_providers())
    return session


@dataclass(frozen=True)
class Timing:
    batch_size: int
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    throughput: float  # images per second

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def measure(
    run: Callable[[], Any],
    *,
    batch_size: int,
    warmup: int = 2,
    seconds: float = 2.0,
    min_iterations: int = 5,
    max_iterations: int = 1000,
) -> Timing:
    """Time `run()` (one batch) after `warmup` calls, for about `seconds` and at least
    `min_iterations` calls."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iterations and (
        len(times) < min_iterations or time.perf_counter() - start < seconds
    ):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000.0)
    ms = np.asarray(times)
    return Timing(
        batch_size=batch_size,
        iterations=len(ms),
        mean_ms=round(float(ms.mean()), 3),
        p50_ms=round(float(np.percentile(ms, 50)), 3),
        p90_ms=round(float(np.percentile(ms, 90)), 3),
        p99_ms=round(float(np.percentile(ms, 99)), 3),
        min_ms=round(float(ms.min()), 3),
        throughput=round(batch_size * 1000.0 / float(ms.mean()), 2),
    )


def bench_session(
    session: Any,
    images: np.ndarray,
    batch_sizes: Sequence[int],
    *,
    warmup: int = 2,
    seconds: float = 2.0,
) -> list[Timing]:
    """Timing per batch size, on batches cut (and repeated if needed) from `images`."""
    name = session.get_inputs()[0].name
    out = []
    for b in batch_sizes:
        batch = np.resize(images, (b, *images.shape[1:])).astype(np.uint8)
        out.append(
            measure(
                lambda batch=batch: session.run(None, {name: batch}),
                batch_size=b,
                warmup=warmup,
                seconds=seconds,
            )
        )
    return out


def bench_keras(
    model: Any,
    images: np.ndarray,
    batch_sizes: Sequence[int],
    *,
    warmup: int = 2,
    seconds: float = 2.0,
) -> list[Timing]:
    """The same measurement for a Keras model's `predict` (what a Keras user would call)."""
    out = []
    for b in batch_sizes:
        batch = np.resize(images, (b, *images.shape[1:])).astype(np.float32)
        out.append(
            measure(
                lambda batch=batch: model.predict(batch, batch_size=len(batch), verbose=0),
                batch_size=b,
                warmup=warmup,
                seconds=seconds,
            )
        )
    return out


def predict(session: Any, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """probs for every image, in batches."""
    name = session.get_inputs()[0].name
    parts = [
        session.run(None, {name: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
