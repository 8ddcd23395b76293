"""int8 with the classifier head in float vs fully quantized, VGG16 at 224x224, side by side.

    nice .venv/bin/python benchmarks/int8_head.py                 # ~10 min on 2 cores
    nice .venv/bin/python benchmarks/int8_head.py --run-dir RUN   # a trained run

The run dir is made as in benchmarks/export_variants.py (shipped synthetic-source backbone,
head fitted on pooled features; reused from --work if there). One fp32 ONNX file, one
prepared graph and one calibration set; two int8 files from it: `float_head` (what
`tl2edge export` writes: final classifier and Softmax unquantized) and `quantized_head`
(`keep_float=[]`: Q/DQ around the logits and the Softmax output, the earlier graph). Measured
on the run's validation images: top-1 agreement with fp32, max |probs - fp32|, how far the
rows are from summing to 1, the smallest score; latency at batch 1 and 8 in interleaved
rounds. Prints a table and writes benchmarks/results/int8_head.json. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from tl2edge.host import cpu_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="a trained run (default: made in --work)")
    parser.add_argument("--work", default=str(ROOT / "build" / "bench-int8-head"))
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="per file per round")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8_head.json"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    from export_variants import interleaved, make_run

    from tl2edge.export import onnx as onnx_step
    from tl2edge.export import rundir
    from tl2edge.export.bench import make_session
    from tl2edge.export.quantize import PRESETS, float_head, preprocess, quantize_int8
    from tl2edge.rundir import RunDir

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.run_dir:
        run_dir = Path(args.run_dir)
    elif RunDir.is_complete(work / "run"):
        run_dir = work / "run"
    else:
        print("making a 224x224 run dir (head fitted on pooled features) ...", flush=True)
        run_dir, _ = make_run(
            work,
            size=224,
            classes=5,
            per_class=40,
            backbone=ROOT / "tl2edge" / "assets" / "vgg16_synth_source.npz",
        )
    run = rundir.open_run(run_dir)
    train, val = rundir.load_run_images(run)
    calib = rundir.sample(train, args.calibration_samples, seed=0)
    fp32 = work / "fp32.onnx"
    if not fp32.is_file():
        print("converting to ONNX ...", flush=True)
        import onnx

        model = rundir.load_keras_model(run)
        onnx.save(onnx_step.convert_keras(model, opset=17), str(work / "converted.onnx"))
        onnx_step.optimize(work / "converted.onnx", fp32)
    prepared = work / "prepared.onnx"
    preprocess(fp32, prepared)
    files = {
        "float_head": work / "int8-float-head.onnx",
        "quantized_head": work / "int8-q-head.onnx",
    }
    keep = {"float_head": None, "quantized_head": []}
    for name, path in files.items():
        t = time.perf_counter()
        quantize_int8(prepared, path, calib, PRESETS["u8s8"], cache_dir=work, keep_float=keep[name])
        print(f"quantized {name} in {time.perf_counter() - t:.0f} s", flush=True)

    sessions = {"fp32": make_session(fp32), **{n: make_session(p) for n, p in files.items()}}
    probs = {
        n: np.concatenate(
            [s.run(None, {"image": val.x[i : i + 8]})[0] for i in range(0, len(val.x), 8)]
        )
        for n, s in sessions.items()
    }
    quality = {}
    for name in files:
        p = probs[name]
        quality[name] = {
            "agreement_pct": float((p.argmax(1) == probs["fp32"].argmax(1)).mean() * 100),
            "accuracy_pct": float((p.argmax(1) == val.y).mean() * 100),
            "max_abs_diff": float(np.abs(p - probs["fp32"]).max()),
            "max_sum_error": float(np.abs(p.sum(1, dtype=np.float64) - 1).max()),
            "smallest_score": float(p.min()),
            "scores_at_0": int((p == 0).sum()),
        }
    quality["fp32"] = {
        "accuracy_pct": float((probs["fp32"].argmax(1) == val.y).mean() * 100),
        "max_sum_error": float(np.abs(probs["fp32"].sum(1, dtype=np.float64) - 1).max()),
        "smallest_score": float(probs["fp32"].min()),
    }
    latency = {}
    for batch in (1, 8):
        x = val.x[:batch] if len(val.x) >= batch else np.resize(val.x, (batch, *val.x.shape[1:]))
        runners = {n: (lambda s=s, x=x: s.run(None, {"image": x})) for n, s in sessions.items()}
        latency[f"batch{batch}"] = interleaved(runners, rounds=args.rounds, seconds=args.seconds)
    b1 = latency["batch1"]
    results = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "run_dir": str(run_dir),
        "validation_images": len(val.x),
        "float_nodes": float_head(prepared),
        "quality": quality,
        "latency": latency,
        "ratios": {
            "float_head_vs_quantized_head_b1_p50": b1["float_head"]["p50_ms"]
            / b1["quantized_head"]["p50_ms"],
            "float_head_vs_fp32_b1_p50": b1["float_head"]["p50_ms"] / b1["fp32"]["p50_ms"],
        },
    }
    print(f"\n{results['machine']['cpu']}, {len(val.x)} validation images")
    print("| file | b1 p50 ms | b8 p50 ms | agreement % | max |diff| | max |sum-1| | smallest |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in sessions:
        q = quality[n]
        print(
            f"| {n} | {b1[n]['p50_ms']:.1f} | {latency['batch8'][n]['p50_ms']:.1f} | "
            f"{q.get('agreement_pct', 100.0):.1f} | {q.get('max_abs_diff', 0.0):.4f} | "
            f"{q['max_sum_error']:.2e} | {q['smallest_score']:.2e} |"
        )
    print(json.dumps(results["ratios"], indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
