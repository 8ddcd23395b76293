"""ONNX Runtime sessions: execution provider choice, session options, warm-up.

`--device auto` takes the best provider this onnxruntime build offers (TensorRT is never
chosen automatically: its engine build takes minutes) and falls back to CPU with one
warning; `cuda` and `tensorrt` are promises, so when the session does not really get
that provider, start-up fails with what is missing. ONNX Runtime falls back silently when
the CUDA libraries are absent, which is why the providers a session actually got are read
back after creating it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tl2edge.errors import UserError
from tl2edge.serve.errors import DeviceUnavailable

log = logging.getLogger("tl2edge.serve.runtime")

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
ARENA_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")


@dataclass(frozen=True)
class RuntimeConfig:
    """How sessions are created. 0 threads = ONNX Runtime's default (one per core)."""

    device: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"
    cuda_device_id: int = 0
    cuda_mem_limit_mb: int = 0  # 0 = no limit
    cuda_arena_extend_strategy: str = "kNextPowerOfTwo"

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.graph_optimization not in OPT_LEVELS:
            raise ValueError(
                f"graph optimization {self.graph_optimization!r} is not one of {', '.join(OPT_LEVELS)}"
            )
        if self.cuda_arena_extend_strategy not in ARENA_STRATEGIES:
            raise ValueError(
                f"CUDA arena strategy {self.cuda_arena_extend_strategy!r} is not one of "
                f"{', '.join(ARENA_STRATEGIES)}"
            )
        if min(self.intra_op_threads, self.inter_op_threads, self.cuda_mem_limit_mb) < 0:
            raise ValueError("thread counts and the CUDA memory limit must be >= 0")

    def __str__(self) -> str:
        return (
            f"device={self.device} threads={self.intra_op_threads or 'auto'}/"
            f"{self.inter_op_threads or 'auto'} opt={self.graph_optimization}"
        )


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def requested_providers(config: RuntimeConfig) -> list[str]:
    """The provider list to ask ONNX Runtime for; raises DeviceUnavailable for a missing one."""
    available = available_providers()
    if config.device == "cpu":
        return [CPU]
    if config.device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    wanted = [TENSORRT, CUDA] if config.device == "tensorrt" else [CUDA]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise DeviceUnavailable(
            f"--device {config.device} needs {', '.join(missing)}, but this onnxruntime "
            f"({ort.__version__}) offers only {', '.join(available)}. Install onnxruntime-gpu "
            f"(pip install 'tl2edge[serve,gpu]' and uninstall onnxruntime) on a machine with an "
            f"NVIDIA driver, or use --device cpu / --device auto"
        )
    return [*wanted, CPU]


def _provider_options(name: str, config: RuntimeConfig) -> dict[str, Any]:
    if name == CUDA:
        options: dict[str, Any] = {
            "device_id": config.cuda_device_id,
            "arena_extend_strategy": config.cuda_arena_extend_strategy,
        }
        if config.cuda_mem_limit_mb:
            options["gpu_mem_limit"] = config.cuda_mem_limit_mb * 1024 * 1024
        return options
    if name == TENSORRT:
        return {"device_id": config.cuda_device_id}
    return {}


class ProviderCheck:
    """Checks each new session's real providers; warns once per process for `auto`."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self._warned = False

    def check(self, got: list[str], model: str) -> None:
        device = self.config.device
        if device == "cpu":
            return
        if device in ("cuda", "tensorrt"):
            need = TENSORRT if device == "tensorrt" else CUDA
            if need not in got:
                raise DeviceUnavailable(
                    f"--device {device}: the session for {model} did not get {need} (it got "
                    f"{', '.join(got)}); the CUDA/cuDNN{'/TensorRT' if device == 'tensorrt' else ''} "
                    f"libraries or the GPU are missing. Check `nvidia-smi` and the onnxruntime-gpu "
                    f"requirements, or use --device cpu"
                )
            return
        if CUDA not in got and not self._warned:
            self._warned = True
            log.warning(
                "--device auto: no usable CUDA execution provider, running on CPU",
                extra={"available": ",".join(available_providers()), "providers": ",".join(got)},
            )


def create_session(
    path: str | Path, config: RuntimeConfig, check: ProviderCheck | None = None
) -> ort.InferenceSession:
    """An InferenceSession on the configured device; raises DeviceUnavailable if it is not."""
    options = ort.SessionOptions()
    options.graph_optimization_level = OPT_LEVELS[config.graph_optimization]
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.log_severity_level = 3  # ORT's own fallback warnings are replaced by ours
    providers = requested_providers(config)
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=options,
            providers=[(p, _provider_options(p, config)) for p in providers],
        )
    except Exception as exc:  # ORT raises its own pybind classes (InvalidProtobuf, Fail, ...)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(
            f"{path}: ONNX Runtime cannot load this model ({type(exc).__name__}: {reason}); "
            "re-export it or remove it from the repository"
        ) from exc
    (check or ProviderCheck(config)).check(session.get_providers(), str(path))
    return session


def warm_up(
    session: ort.InferenceSession, input_name: str, shape: tuple[int, ...], dtype: Any
) -> None:
    """Run once so the first real request does not pay for allocation and kernel set-up."""
    session.run(None, {input_name: np.zeros(shape, dtype=dtype)})
