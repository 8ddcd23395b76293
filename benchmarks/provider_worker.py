"""Times one engine on one ONNX file; run by provider_bench.py inside whichever virtualenv
has that engine. Imports only numpy and the engine (no tl2edge), prints one JSON line.

    python provider_worker.py ENGINE MODEL --batch-sizes 1,2,4,8 --seconds 2

ENGINE: ort-cpu | ort-openvino-plugin | ort-openvino-builtin | openvino-api
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def session_runner(engine: str, model: str):  # type: ignore[no-untyped-def]
    """(run(batch) -> probs, facts) for ENGINE."""
    if engine == "openvino-api":
        import openvino as ov

        core = ov.Core()
        t = time.perf_counter()
        compiled = core.compile_model(model, "CPU")
        facts = {
            "compile_s": round(time.perf_counter() - t, 2),
            "openvino": ov.__version__,
            "precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
        }
        request = compiled.create_infer_request()
        return (lambda x: request.infer({0: x})), facts

    import onnxruntime as ort

    options = ort.SessionOptions()
    kwargs = {}
    if engine == "ort-cpu":
        kwargs["providers"] = ["CPUExecutionProvider"]
    elif engine == "ort-openvino-builtin":
        kwargs["providers"] = [
            ("OpenVINOExecutionProvider", {"precision": "FP32"}),
            "CPUExecutionProvider",
        ]
    elif engine == "ort-openvino-plugin":
        import onnxruntime_ep_openvino as plugin

        ort.register_execution_provider_library("ov", plugin.get_library_path())
        devices = [
            d
            for d in ort.get_ep_devices()
            if d.ep_name == plugin.get_ep_name() and d.ep_metadata.get("ov_device") == "CPU"
        ]
        if not devices:
            raise SystemExit("the OpenVINO plugin lists no CPU device on this machine")
        options.add_provider_for_devices(devices, {"precision": "FP32"})
    t = time.perf_counter()
    session = ort.InferenceSession(model, sess_options=options, **kwargs)
    facts = {
        "compile_s": round(time.perf_counter() - t, 2),
        "onnxruntime": ort.__version__,
        "providers": session.get_providers(),
    }
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})), facts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("engine")
    p.add_argument("model")
    p.add_argument("--batch-sizes", default="1,2,4,8")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    run, facts = session_runner(args.engine, args.model)
    rng = np.random.default_rng(0)
    results = {}
    for b in (int(s) for s in args.batch_sizes.split(",")):
        x = rng.integers(0, 256, (b, args.size, args.size, 3)).astype(np.uint8)
        run(x)  # warm-up
        times = []
        start = time.perf_counter()
        while len(times) < 2 or time.perf_counter() - start < args.seconds:
            t = time.perf_counter()
            run(x)
            times.append((time.perf_counter() - t) * 1000.0)
        ms = np.asarray(times)
        results[str(b)] = {
            "p50_ms": round(float(np.median(ms)), 2),
            "throughput": round(b * 1000.0 / float(ms.mean()), 2),
            "n": len(ms),
        }
    print(json.dumps({"engine": args.engine, **facts, "results": results}))


if __name__ == "__main__":
    main()
