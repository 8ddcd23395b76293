"""ONNX Runtime's CPU provider vs OpenVINO's CPU plugin on the same ONNX files, side by side.

    python3 -m venv .cache/ov-venv
    .cache/ov-venv/bin/pip install onnxruntime onnxruntime-ep-openvino openvino numpy
    nice .cache/ov-venv/bin/python benchmarks/openvino_cpu.py FILE.onnx [FILE.onnx ...]

Runs in its own virtualenv (needs only onnxruntime, openvino and numpy; no tl2edge), so
`openvino` never enters the project's environment. For each file: batch-1 latency through
ONNX Runtime (CPU provider), through the OpenVINO execution provider plugin when it offers
a device on this machine, and through the OpenVINO Python API (its CPU plugin is what the
execution provider runs), in interleaved rounds; top-1 agreement and max |difference| of
the outputs against ONNX Runtime's on random images. Prints a table, writes JSON (--out).
Never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from tl2edge.host import cpu_name


def _openvino_ep_devices() -> list:
    """The OpenVINO execution provider's devices on this machine ([] if none / not installed)."""
    import onnxruntime as ort

    try:
        import onnxruntime_ep_openvino as plugin
    except ImportError:
        return []
    ort.register_execution_provider_library(plugin.get_ep_name(), plugin.get_library_path())
    return [d for d in ort.get_ep_devices() if d.ep_name == plugin.get_ep_name()]


def runners_for(path: Path, x: np.ndarray, ep_devices: list) -> dict:
    import onnxruntime as ort
    import openvino as ov

    out = {}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out["ort_cpu"] = lambda: session.run(None, {"image": x})[0]
    cpu_devices = [d for d in ep_devices if str(d.device.type).endswith("CPU")]
    if cpu_devices:
        options = ort.SessionOptions()
        options.add_provider_for_devices(cpu_devices, {})
        ep = ort.InferenceSession(str(path), sess_options=options)
        out["ort_openvino_ep"] = lambda: ep.run(None, {"image": x})[0]
    compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    out["openvino_api"] = lambda: request.infer({0: x})[compiled.output(0)].copy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per runner per round")
    parser.add_argument("--images", type=int, default=32, help="random images for agreement")
    parser.add_argument("--out", default="benchmarks/results/openvino_cpu.json")
    args = parser.parse_args()
    import onnxruntime as ort
    import openvino as ov

    ep_devices = _openvino_ep_devices()
    results = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "versions": {"onnxruntime": ort.__version__, "openvino": ov.__version__},
        "openvino_ep_devices": [str(d.device.type) for d in ep_devices],
        "files": {},
    }
    for path in args.files:
        import onnxruntime as ort

        shape = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
        size = [int(d) for d in shape.shape[1:]]
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (1, *size), np.uint8)
        runners = runners_for(path, x, ep_devices)
        times: dict[str, list[float]] = {n: [] for n in runners}
        for run in runners.values():
            run()
            run()
        for _ in range(args.rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                while time.perf_counter() - start < args.seconds:
                    t = time.perf_counter()
                    run()
                    times[name].append((time.perf_counter() - t) * 1000)
        images = rng.integers(0, 256, (args.images, 1, *size), np.uint8)
        outputs = {n: [] for n in runners}
        for img in images:
            x[...] = img
            for name, run in runners.items():
                outputs[name].append(run()[0])
        ref = np.array(outputs["ort_cpu"])
        entry = {}
        for name in runners:
            o = np.array(outputs[name])
            entry[name] = {
                "p50_ms": float(np.median(times[name])),
                "n": len(times[name]),
                "agreement_with_ort_cpu_pct": float((o.argmax(1) == ref.argmax(1)).mean() * 100),
                "max_abs_diff_vs_ort_cpu": float(np.abs(o - ref).max()),
                "max_sum_error": float(np.abs(o.sum(1, dtype=np.float64) - 1).max()),
            }
        results["files"][str(path)] = entry
    print(f"{results['machine']['cpu']}, {results['versions']}")
    print(f"OpenVINO EP devices here: {results['openvino_ep_devices'] or 'none'}")
    print("| file | runner | b1 p50 ms | vs ort_cpu | agreement % | max |diff| |")
    print("|---|---|---:|---:|---:|---:|")
    for path, entry in results["files"].items():
        base = entry["ort_cpu"]["p50_ms"]
        for name, e in entry.items():
            print(
                f"| {Path(path).name} | {name} | {e['p50_ms']:.1f} | {e['p50_ms'] / base:.2f} | "
                f"{e['agreement_with_ort_cpu_pct']:.1f} | {e['max_abs_diff_vs_ort_cpu']:.4f} |"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
