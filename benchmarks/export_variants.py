"""Export benchmark: VGG16 at 224x224 through `tl2edge export`, fp32 vs int8 vs Keras.

    nice .venv/bin/python benchmarks/export_variants.py                 # random-init VGG16, ~6 min
    nice .venv/bin/python benchmarks/export_variants.py --run-dir RUN   # a trained run instead
    ... --target-run /tmp/demo-out/runs/transfer   # also export the demo's fine-tuned model

Without --run-dir a run dir is made from a random-init VGG16 (224x224, 5 classes, the output
bias centred so predictions spread over the classes) and the synthetic target images
(160: 128 train = the calibration set, 32 validation). Measured in one process, side by
side: file sizes, export time (128 calibration images, one int8 recipe, and `auto`), batch-1
latency and batch-8 throughput of ONNX fp32, ONNX int8 and Keras `predict` on the same
inputs, measured in interleaved rounds so that load from other processes hits all three
alike. With --target-run, the accuracy and agreement targets are measured on that run's
validation images. Prints a table, writes benchmarks/results/export_variants.json.
Never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "int8_size_ratio": 0.26,
    "int8_vs_fp32_latency": 0.55,
    "fp32_vs_keras_latency": 0.67,
    "agreement_pct": 99.0,
    "accuracy_drop_pt": 1.0,
    "export_s": 90.0,
}


def make_random_run(out: Path, *, size: int, classes: int, per_class: int) -> Path:
    import keras

    from tl2edge.synth import write_dataset
    from tl2edge.train.config import TrainConfig
    from tl2edge.train.model import build_model

    data = write_dataset(
        out / "data", task="target", per_class=per_class, size=size, classes=classes,
        seed=0, overwrite=True, progress=False,
    )  # fmt: skip
    keras.utils.set_random_seed(0)
    model = build_model(classes, image_size=size)
    from tl2edge.images import decode_rgb

    sample = [decode_rgb(p, size) for p in sorted(data.rglob("*.png"))[:: max(1, per_class // 4)]]
    features = keras.Model(model.input, model.get_layer("dense").output).predict(
        np.stack(sample).astype(np.float32), batch_size=8, verbose=0
    )
    kernel, bias = model.get_layer("probs").get_weights()
    model.get_layer("probs").set_weights([kernel, bias - (features @ kernel + bias).mean(axis=0)])
    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    model.save(run / "model.keras")
    cfg = TrainConfig(data_dir=str(data), image_size=size, weights="none", val_split=0.2, seed=0)
    labels = sorted(p.name for p in data.iterdir() if p.is_dir())
    (run / "config.json").write_text(json.dumps(cfg.to_json()))
    (run / "labels.json").write_text(json.dumps(labels))
    (run / "state.json").write_text(json.dumps({"status": "complete"}))
    return run


def interleaved(runners: dict[str, callable], *, rounds: int, seconds: float) -> dict[str, dict]:
    """Latency per runner (ms): `rounds` rounds, each runner for `seconds` per round."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run()  # warm-up
        run()
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            while not times[name] or time.perf_counter() - start < seconds:
                t = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - t) * 1000)
                if time.perf_counter() - start >= seconds:
                    break
    return {
        name: {
            "n": len(ms),
            "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(np.mean(ms)),
        }
        for name, ms in times.items()
    }


def latency_table(run_dir: Path, fp32: Path, int8: Path, *, rounds: int, seconds: float) -> dict:
    from tl2edge.export.bench import make_session
    from tl2edge.export.rundir import load_keras_model, open_run

    model = load_keras_model(open_run(run_dir))
    s32, s8 = make_session(fp32), make_session(int8)
    size = model.input_shape[1]
    out = {}
    for batch in (1, 8):
        x = np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), np.uint8)
        xf = x.astype(np.float32)
        runners = {
            "keras_predict": lambda xf=xf: model.predict(xf, batch_size=len(xf), verbose=0),
            "onnx_fp32": lambda x=x: s32.run(None, {"image": x}),
            "onnx_int8": lambda x=x: s8.run(None, {"image": x}),
        }
        stats = interleaved(runners, rounds=rounds, seconds=seconds)
        for v in stats.values():
            v["img_per_s"] = batch * 1000.0 / v["mean_ms"]
        out[f"batch{batch}"] = stats
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="a trained run (default: random-init VGG16)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--target-run", help="a trained run for the accuracy/agreement targets")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0, help="per runner per round")
    parser.add_argument(
        "--skip-auto", action="store_true", help="skip the --quantization auto export"
    )
    parser.add_argument("--work", default=str(ROOT / "build" / "bench-export"))
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "export_variants.json")
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    from tl2edge.export import export

    work = Path(args.work)
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    t = time.perf_counter()
    run_dir = (
        Path(args.run_dir)
        if args.run_dir
        else make_random_run(work, size=args.image_size, classes=5, per_class=32)
    )
    setup_s = time.perf_counter() - t
    common = dict(repository=repo, calibration_samples=args.calibration_samples, bench_seconds=1.0)
    # A random-init model has no accuracy to keep; its gate is opened and agreement reported.
    drop = 100.0 if not args.run_dir else 1.0
    t = time.perf_counter()
    one = export(run_dir, name="vgg16", quantization="u8s8", max_accuracy_drop=drop, **common)
    export_s = time.perf_counter() - t
    auto = None
    if not args.skip_auto:
        t = time.perf_counter()
        auto = export(run_dir, name="vgg16-auto", max_accuracy_drop=drop, **common)
        auto_s = time.perf_counter() - t
    fp32, int8 = one.row("fp32"), one.row("int8")
    lat = latency_table(
        run_dir, fp32.path / "model.onnx", int8.path / "model.onnx",
        rounds=args.rounds, seconds=args.seconds,
    )  # fmt: skip
    b1 = lat["batch1"]
    results = {
        "machine": {
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "model": f"VGG16 {args.image_size}x{args.image_size}"
        + (f" from {args.run_dir}" if args.run_dir else " (random init)"),
        "setup_s": round(setup_s, 1),
        "export_s": round(export_s, 1),
        "export_auto_s": round(auto_s, 1) if auto else None,
        "auto_chosen": auto.row("int8").quantization if auto else None,
        "sizes": {r.variant: r.size_bytes for r in one.rows},
        "quality_224": {r.variant: [r.accuracy, r.agreement] for r in one.rows},
        "latency": lat,
        "ratios": {
            "int8_size_ratio": int8.size_bytes / fp32.size_bytes,
            "int8_vs_fp32_latency": b1["onnx_int8"]["p50_ms"] / b1["onnx_fp32"]["p50_ms"],
            "fp32_vs_keras_latency": b1["onnx_fp32"]["p50_ms"] / b1["keras_predict"]["p50_ms"],
        },
        "targets": TARGETS,
    }
    if args.target_run:
        t = time.perf_counter()
        target = export(args.target_run, repository=repo, name="target", bench_seconds=1.0)
        fp, i8 = target.row("fp32"), target.row("int8")
        results["target_task"] = {
            "run": args.target_run,
            "export_s": round(time.perf_counter() - t, 1),
            "fp32_accuracy": fp.accuracy,
            "int8_accuracy": i8.accuracy,
            "agreement_pct": i8.agreement * 100,
            "accuracy_drop_pt": (fp.accuracy - i8.accuracy) * 100,
            "quantization": i8.quantization,
            "validation_images": json.loads((fp.path / "report.json").read_text())[
                "validation_images"
            ],
        }
    _print(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _print(r: dict) -> None:
    print(f"\n{r['model']} on {r['machine']['cpu']}")
    print(f"{'runtime':14} {'p50 ms b=1':>11} {'p90 ms b=1':>11} {'img/s b=8':>10}")
    for name in ("keras_predict", "onnx_fp32", "onnx_int8"):
        b1, b8 = r["latency"]["batch1"][name], r["latency"]["batch8"][name]
        print(f"{name:14} {b1['p50_ms']:11.1f} {b1['p90_ms']:11.1f} {b8['img_per_s']:10.2f}")
    print("\nfile sizes MB: " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in r["sizes"].items()))
    print(
        f"export (one int8 recipe, {r['export_s']} s); auto: {r['export_auto_s']} s -> {r['auto_chosen']}"
    )
    print(f"\n{'ratio':24} {'measured':>9} {'target':>8}")
    for k, v in r["ratios"].items():
        print(f"{k:24} {v:9.3f} {r['targets'][k]:8.2f}")
    if "target_task" in r:
        t = r["target_task"]
        print(
            f"target task: agreement {t['agreement_pct']:.1f}% (>= 99), accuracy drop "
            f"{t['accuracy_drop_pt']:.2f} pt (<= 1), fp32 {t['fp32_accuracy']:.2%}, "
            f"{t['validation_images']} validation images"
        )


if __name__ == "__main__":
    main()
