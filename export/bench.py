"""Latency/throughput measurement and batched prediction on ONNX Runtime sessions.

Sessions come from the one device policy, `tl2edge.serve.providers` (the same as the
server's): `cpu | openvino | cuda | tensorrt` are promises checked against what the session
really got, `auto` measures the available providers and keeps the fastest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("tl2edge.export")


def make_session(path: str | Path, *, device: str = "cpu", threads: int = 0, **options: Any) -> Any:
    """A verified InferenceSession on `device`; `threads` = intra-op threads (0: ORT's
    default); `options` are other RuntimeConfig fields (openvino_precision, ...)."""
    return make_selection(path, device=device, threads=threads, **options).session


def make_selection(
    path: str | Path, *, device: str = "cpu", threads: int = 0, **options: Any
) -> Any:
    """The session and how it was picked (`providers.Selection`: device, probes)."""
    from tl2edge.errors import UserError
    from tl2edge.serve.providers import DEVICES, RuntimeConfig, select_session

    if device not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    config = RuntimeConfig(device=device, intra_op_threads=max(0, threads), **options)
    return select_session(path, config)


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
