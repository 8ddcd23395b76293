"""Execution providers: the one device policy of serve, bench, evaluate and export.

Devices are `auto | cpu | openvino | cuda | tensorrt`. An explicit device is a promise:
when its provider is not installed, start-up fails naming the package to install; when
it is installed but a session does not really get it (ONNX Runtime drops a provider whose
libraries fail to load without raising), start-up fails too. That is why the providers a
session got are always read back with `session.get_providers()`.

`auto` measures: every available provider (TensorRT only when asked for: its engine build
takes minutes) gets a session, a warm-up and a short timed run at batch 1 and at the
largest batch, and the fastest is kept (`choose`, a pure function). When there is only
one candidate (CPU), nothing is measured.

OpenVINO comes in two shapes, both handled here: the plugin package
`onnxruntime-ep-openvino` next to the stock onnxruntime (registered once per process with
`register_execution_provider_library`, then selected per device with `get_ep_devices()` +
`SessionOptions.add_provider_for_devices`), or an onnxruntime build with the provider
compiled in (`onnxruntime-openvino`, selected by name like CUDA).

This module lives in the serving package because it imports onnxruntime; the core package
does not. It imports no TensorFlow.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tl2edge.errors import UserError
from tl2edge.host import cpu_name
from tl2edge.serve.config import DEVICES, RuntimeConfig

log = logging.getLogger("tl2edge.serve.providers")

CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PROVIDER = {"cpu": CPU, "openvino": OPENVINO, "cuda": CUDA, "tensorrt": TENSORRT}
DEVICE_OF = {p: d for d, p in PROVIDER.items()}
# Simplest first: on a tie `auto` keeps the earlier one (fewer libraries, fewer surprises).
SIMPLICITY = ("cpu", "openvino", "cuda", "tensorrt")
AUTO_MARGIN = 0.05  # another provider must be >5% faster than a simpler one to be chosen
OPENVINO_PLUGIN = "onnxruntime_ep_openvino"
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_GPU_INSTALL = (
    "install onnxruntime-gpu (pip install 'tl2edge[serve,gpu]', then pip uninstall "
    "onnxruntime) on a machine with an NVIDIA driver"
)
INSTALL = {
    "openvino": "install the OpenVINO execution provider: pip install 'tl2edge[openvino]' "
    "(package onnxruntime-ep-openvino)",
    "cuda": _GPU_INSTALL,
    "tensorrt": _GPU_INSTALL + " and the TensorRT libraries",
}


class DeviceUnavailable(UserError):
    """The requested execution provider cannot be used (a start-up error, not per request)."""


# -- availability ---------------------------------------------------------------------------
_plugin_lock = threading.Lock()
_plugin_state: dict[str, Any] = {}


def available_providers() -> list[str]:
    """Providers compiled into this onnxruntime (plugins are not listed here)."""
    return list(ort.get_available_providers())


def _openvino_plugin_devices() -> tuple[list[Any], str]:
    """(OpenVINO EP devices of the plugin, why none) — registers the plugin once."""
    with _plugin_lock:
        if "devices" not in _plugin_state:
            try:
                import onnxruntime_ep_openvino as plugin
            except ImportError:
                _plugin_state.update(devices=[], reason=f"{OPENVINO_PLUGIN} is not installed")
            else:
                try:
                    ort.register_execution_provider_library(
                        "tl2edge-openvino", plugin.get_library_path()
                    )
                    devices = [d for d in ort.get_ep_devices() if d.ep_name == plugin.get_ep_name()]
                except Exception as exc:  # a broken or mismatched plugin must not stop CPU serving
                    _plugin_state.update(
                        devices=[], reason=f"the OpenVINO plugin did not load ({exc})"
                    )
                else:
                    cpu = [d for d in devices if d.ep_metadata.get("ov_device") == "CPU"]
                    reason = "" if cpu else (
                        f"the OpenVINO plugin ({OPENVINO_PLUGIN}) is installed but offers no "
                        "CPU device on this machine (its releases list Intel devices only; "
                        "on other CPUs install onnxruntime-openvino instead of onnxruntime)"
                    )  # fmt: skip
                    _plugin_state.update(devices=cpu, reason=reason)
        return list(_plugin_state["devices"]), str(_plugin_state["reason"])


def unavailable_reason(device: str) -> str:
    """'' when `device` can be asked for on this machine, else why not (with what to install)."""
    if device == "cpu":
        return ""
    if device == "openvino":
        if OPENVINO in available_providers():
            return ""
        devices, reason = _openvino_plugin_devices()
        if devices:
            return ""
        if reason.endswith("is not installed"):
            return f"{reason}; {INSTALL['openvino']}"
        return reason
    available = available_providers()
    wanted = [TENSORRT, CUDA] if device == "tensorrt" else [PROVIDER[device]]
    missing = [p for p in wanted if p not in available]
    if missing:
        return (
            f"this onnxruntime ({ort.__version__}) has no {', '.join(missing)} (it offers "
            f"{', '.join(available)}); {INSTALL[device]}"
        )
    return ""


def auto_candidates() -> list[str]:
    """Devices `auto` measures: every available one but TensorRT, simplest first."""
    return [d for d in SIMPLICITY if d != "tensorrt" and not unavailable_reason(d)]


def require(device: str) -> None:
    """DeviceUnavailable naming the package to install when an explicit device is missing."""
    if device not in DEVICES:
        raise DeviceUnavailable(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return
    reason = unavailable_reason(device)
    if reason:
        raise DeviceUnavailable(f"--device {device}: {reason}; or use --device cpu / auto")


# -- sessions ---------------------------------------------------------------------------------
def provider_options(device: str, config: RuntimeConfig) -> dict[str, str]:
    """The options passed to the provider of `device` (ONNX Runtime takes strings)."""
    if device == "cuda":
        options = {
            "device_id": str(config.cuda_device_id),
            "arena_extend_strategy": config.cuda_arena_extend_strategy,
        }
        if config.cuda_mem_limit_mb:
            options["gpu_mem_limit"] = str(config.cuda_mem_limit_mb * 1024 * 1024)
        return options
    if device == "tensorrt":
        return {"device_id": str(config.cuda_device_id)}
    if device == "openvino":
        options = {"precision": config.openvino_precision}
        if config.openvino_streams:
            options["num_streams"] = str(config.openvino_streams)
        if config.openvino_threads:
            options["num_of_threads"] = str(config.openvino_threads)
        if config.openvino_cache_dir:
            options["cache_dir"] = str(config.openvino_cache_dir)
        return options
    return {}


def provider_list(device: str, config: RuntimeConfig) -> list[tuple[str, dict[str, str]]]:
    """What to pass as `providers=` for a device compiled into onnxruntime."""
    chain = {"cpu": ["cpu"], "openvino": ["openvino", "cpu"], "cuda": ["cuda", "cpu"]}.get(
        device, ["tensorrt", "cuda", "cpu"]
    )
    return [(PROVIDER[d], provider_options(d, config)) for d in chain]


def session_options(config: RuntimeConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = OPT_LEVELS[config.graph_optimization]
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.log_severity_level = 3  # ORT's own fallback warnings are replaced by ours
    return options


def verify(device: str, got: list[str], model: str) -> None:
    """An explicit device must really be in the session (ORT drops failing ones silently)."""
    need = PROVIDER[device]
    if need not in got:
        libs = {"cuda": "the CUDA/cuDNN libraries or the GPU", "tensorrt": "the TensorRT/CUDA "
                "libraries or the GPU", "openvino": "the OpenVINO libraries"}.get(device, "")  # fmt: skip
        raise DeviceUnavailable(
            f"--device {device}: the session for {model} did not get {need} (it got "
            f"{', '.join(got)}); {libs} are missing or failed to load. Check the install, or "
            "use --device cpu"
        )


def open_session(path: str | Path, device: str, config: RuntimeConfig) -> ort.InferenceSession:
    """A verified InferenceSession on one concrete device (not `auto`)."""
    require(device)
    options = session_options(config)
    kwargs: dict[str, Any] = {}
    if device == "openvino" and OPENVINO not in available_providers():
        devices, _ = _openvino_plugin_devices()
        options.add_provider_for_devices(devices, provider_options("openvino", config))
    else:
        kwargs["providers"] = provider_list(device, config)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, **kwargs)
    except Exception as exc:  # ORT raises its own pybind classes (InvalidProtobuf, Fail, ...)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(
            f"{path}: ONNX Runtime cannot load this model on {device} ({type(exc).__name__}: "
            f"{reason}); re-export it or remove it from the repository"
        ) from exc
    verify(device, session.get_providers(), str(path))
    return session


# -- auto: measure, then choose ---------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """What `auto` measured for one device: median ms per run at batch 1 and at `batch`."""

    device: str
    batch1_ms: float
    batch: int
    batch_ms: float

    @property
    def per_image_ms(self) -> float:
        return self.batch_ms / self.batch

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "batch1_ms": round(self.batch1_ms, 3),
            "batch": self.batch,
            "batch_ms": round(self.batch_ms, 3),
        }


def scores(probes: Iterable[Probe]) -> dict[str, float]:
    """Relative cost per device: the mean of its batch-1 latency and its per-image time at
    the largest batch, each divided by the best of all devices (1.0 = best at both)."""
    probes = list(probes)
    best1 = min(p.batch1_ms for p in probes)
    best_n = min(p.per_image_ms for p in probes)
    return {p.device: (p.batch1_ms / best1 + p.per_image_ms / best_n) / 2 for p in probes}


def choose(
    probes: Iterable[Probe], *, failed: Iterable[str] = (), margin: float = AUTO_MARGIN
) -> str:
    """The device `auto` keeps: the fastest by `scores`, except that a simpler device
    (SIMPLICITY order) within `margin` of it wins, so a faster one has to be more than 5%
    faster to be chosen. Devices in `failed` (outputs broke the accuracy gate) are never
    chosen; CPU is the answer of last resort."""
    bad = set(failed)
    kept = [p for p in probes if p.device not in bad]
    if not kept:
        return "cpu"
    cost = scores(kept)
    best = min(cost.values())
    near = [d for d in cost if cost[d] <= best * (1 + margin)]
    return min(near, key=SIMPLICITY.index)


def time_runs(run: Callable[[], Any], repeats: int) -> float:
    """Median ms of `repeats` calls after one untimed call."""
    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def probe(session: ort.InferenceSession, device: str, batch: int, repeats: int = 3) -> Probe:
    """Time a short run at batch 1 and at `batch` on random pixels of the model's input."""
    spec = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    dtype = np.uint8 if spec.type == "tensor(uint8)" else np.float32
    x = np.random.default_rng(0).integers(0, 256, (batch, *shape[1:])).astype(dtype)
    feed = {spec.name: x[:1]}
    t1 = time_runs(lambda: session.run(None, feed), repeats)
    if batch == 1:
        return Probe(device, t1, 1, t1)
    big = {spec.name: x}
    return Probe(device, t1, batch, time_runs(lambda: session.run(None, big), max(1, repeats - 1)))


@dataclass
class Selection:
    """A session and how it was picked (what metadata, logs and metrics report)."""

    session: ort.InferenceSession
    device: str
    requested: str
    probes: list[Probe] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # device -> why not measured
    options: dict[str, str] = field(default_factory=dict)  # the chosen provider's options
    cached: bool = False  # probes read from --auto-cache-dir instead of measured now

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def table(self) -> str:
        """One line: what was measured and what was chosen."""
        if not self.probes:
            return f"device={self.device} (requested {self.requested}, nothing to measure)"
        cells = [
            f"{p.device}: b1 {p.batch1_ms:.3g} ms, b{p.batch} {p.per_image_ms:.3g} ms/img"
            for p in self.probes
        ]
        cells += [f"{d}: skipped ({why})" for d, why in self.excluded.items()]
        cached = " (cached measurements)" if self.cached else ""
        return f"auto chose {self.device}{cached} | " + " | ".join(cells)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "requested": self.requested,
            "providers": self.providers,
            "probes": [p.to_dict() for p in self.probes],
            "excluded": dict(self.excluded),
            "options": dict(self.options),
            "cached": self.cached,
        }


def select_session(
    path: str | Path,
    config: RuntimeConfig,
    *,
    failed: Mapping[str, str] | None = None,
    max_batch: int | None = None,
) -> Selection:
    """The session to run `path` on: the configured device, or for `auto` the fastest
    measured candidate whose outputs did not fail the accuracy gate (`failed`: device ->
    reason, from the model's manifest)."""
    if config.device != "auto":
        session = open_session(path, config.device, config)
        return Selection(
            session, config.device, config.device, options=provider_options(config.device, config)
        )
    failed = dict(failed or {})
    candidates = auto_candidates()
    excluded = {d: failed[d] for d in candidates if d in failed and d != "cpu"}
    candidates = [d for d in candidates if d not in excluded]
    if len(candidates) == 1:
        return Selection(open_session(path, "cpu", config), "cpu", "auto", excluded=excluded)
    batch = max_batch or config.probe_max_batch
    sessions: dict[str, ort.InferenceSession] = {}
    cache = _probe_cache_file(path, candidates, batch, config)
    probes = _read_probes(cache)
    if probes:  # measured before for this file, machine and options: open only the choice
        chosen = choose(probes)
        selection = Selection(
            open_session(path, chosen, config), chosen, "auto", probes, excluded,
            provider_options(chosen, config), cached=True,
        )  # fmt: skip
        log.info(selection.table(), extra={"model": str(path)})
        return selection
    for device in candidates:
        try:
            session = open_session(path, device, config)
            probes.append(probe(session, device, batch))
        except Exception as exc:  # a candidate that cannot run this model is just not chosen
            excluded[device] = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            continue
        sessions[device] = session
    chosen = choose(probes)
    if chosen not in sessions:  # nothing ran: CPU is the last resort and errors speak for it
        return Selection(open_session(path, "cpu", config), "cpu", "auto", probes, excluded)
    selection = Selection(
        sessions.pop(chosen), chosen, "auto", probes, excluded, provider_options(chosen, config)
    )
    sessions.clear()  # the others are released here
    if cache is not None and len(probes) == len(candidates):
        _write_probes(cache, probes)
    log.info(selection.table(), extra={"model": str(path)})
    return selection


def _probe_cache_file(
    path: str | Path, candidates: list[str], batch: int, config: RuntimeConfig
) -> Path | None:
    """Where `auto`'s measurements of this exact file, machine, runtime and options live."""
    if not config.auto_cache_dir:
        return None
    import hashlib
    import platform

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    key = json.dumps(
        [digest.hexdigest(), candidates, batch, ort.__version__, platform.node(),
         cpu_name(), [provider_options(d, config) for d in candidates],
         config.intra_op_threads, config.inter_op_threads, config.graph_optimization],
    )  # fmt: skip
    name = hashlib.sha256(key.encode()).hexdigest()[:24]
    return Path(config.auto_cache_dir) / f"tl2edge-auto-{name}.json"


def _read_probes(cache: Path | None) -> list[Probe]:
    if cache is None or not cache.is_file():
        return []
    try:
        return [Probe(**p) for p in json.loads(cache.read_text())["probes"]]
    except (ValueError, KeyError, TypeError) as exc:  # a damaged cache is re-measured
        log.warning("ignoring unreadable auto cache %s (%s)", cache, exc)
        return []


def _write_probes(cache: Path, probes: list[Probe]) -> None:
    """Atomic write (temp file, then rename); a read-only cache dir only costs a warning."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{threading.get_ident()}")
        tmp.write_text(json.dumps({"probes": [p.to_dict() for p in probes]}))
        tmp.replace(cache)
    except OSError as exc:
        log.warning("cannot write the auto cache %s (%s)", cache, exc)


def gate_failures(manifest_providers: Mapping[str, Any] | None) -> dict[str, str]:
    """device -> reason for each provider whose recorded outputs failed the accuracy gate."""
    out = {}
    for provider, record in (manifest_providers or {}).items():
        if isinstance(record, Mapping) and record.get("passed") is False:
            out[DEVICE_OF.get(provider, provider)] = "failed the accuracy gate at export"
    return out


# -- reporting ----------------------------------------------------------------------------------
def selection_parameters(selection: Selection | None) -> dict[str, str]:
    """ModelConfig parameters: the device in use and, for `auto`, what was measured."""
    if selection is None:
        return {}
    return {
        "device": selection.device,
        "device_requested": selection.requested,
        "device_selection": json.dumps(selection.to_dict()),
    }


def publish_selections(metrics: Any, models: Iterable[Any]) -> None:
    """Set the device gauges of `metrics` (tl2edge.serve.metrics.Metrics) for `models`."""
    metrics.model_device.clear()
    metrics.auto_probe_ms.clear()
    for m in models:
        sel = m.selection
        if sel is None:
            continue
        metrics.model_device.labels(m.name, str(m.version), sel.device, sel.requested).set(1)
        for p in sel.probes:
            metrics.auto_probe_ms.labels(m.name, str(m.version), p.device, "1").set(p.batch1_ms)
            metrics.auto_probe_ms.labels(m.name, str(m.version), p.device, str(p.batch)).set(
                p.batch_ms
            )
