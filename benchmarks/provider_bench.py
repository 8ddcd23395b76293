"""Execution providers side by side: the same VGG16@224 fp32 and int8 ONNX files on every
engine this machine can run, and what `tl2edge bench --device auto` keeps.

    nice .venv/bin/python benchmarks/provider_bench.py            # ~10 min on 2 cores

Inputs: the files `benchmarks/export_variants.py` writes (build/bench-export/repo/
vgg16-{fp32,int8}/1/model.onnx; `make bench` makes them). Engines, each timed by
provider_worker.py in its own process, one after the other in one run:

- ONNX Runtime CPU EP (the project's virtualenv);
- ONNX Runtime + the `onnxruntime-ep-openvino` plugin EP (project virtualenv; the plugin
  lists Intel devices only, so on other CPUs the reason is recorded instead);
- ONNX Runtime with the OpenVINO EP compiled in (`onnxruntime-openvino`, which also runs on
  non-Intel CPUs; side virtualenv .cache/ort-openvino-venv, shared with the tests);
- the OpenVINO Python API (`openvino`; side virtualenv .cache/openvino-venv);
- `tl2edge bench --device auto` in the project virtualenv and in the onnxruntime-openvino
  one (where `auto` has two candidates to measure).

Batch-1 p50 and the best throughput over batch sizes 1-8 per engine; ratios to the
OpenVINO API. Prints a table, writes benchmarks/results/providers.json and providers.png.
The side virtualenvs are created on first use (PyPI). Never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from tl2edge.host import cpu_name

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("provider_worker.py")
CACHE = ROOT / ".cache"
VENVS = {
    "ort-openvino": (CACHE / "ort-openvino-venv", ["onnxruntime-openvino", "numpy"], True),
    "openvino": (CACHE / "openvino-venv", ["openvino", "numpy"], False),
}


def venv_python(key: str) -> Path:
    """The side virtualenv's python, created (with its packages) on first use."""
    path, packages, with_tl2edge = VENVS[key]
    python = path / "bin" / "python"
    module = "onnxruntime" if key == "ort-openvino" else "openvino"
    if python.exists() and subprocess.run([python, "-c", f"import {module}"]).returncode == 0:
        return python
    print(f"creating {path} ({', '.join(packages)}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *packages], check=True)
    if with_tl2edge:
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(ROOT)], check=True
        )
    return python


def worker(python: Path, engine: str, model: Path, args: argparse.Namespace) -> dict:
    cmd = [str(python), str(WORKER), engine, str(model), "--batch-sizes", args.batch_sizes,
           "--seconds", str(args.seconds)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"engine": engine, "error": (done.stderr or done.stdout).strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def tl2edge_auto(python: Path, model: Path, args: argparse.Namespace, tmp: Path) -> dict:
    out = tmp / f"auto-{python.parent.parent.name}-{model.parent.parent.name}.json"
    cmd = [str(python), "-m", "tl2edge", "bench", str(model), "--device", "auto",
           "--batch-sizes", args.batch_sizes, "--seconds", str(args.seconds), "--warmup", "1",
           "--json", str(out)]  # fmt: skip
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        return {"engine": "tl2edge-auto", "error": done.stderr.strip().splitlines()[-1]}
    r = json.loads(out.read_text())
    return {
        "engine": "tl2edge-auto",
        "providers": r["providers"],
        "chosen": r["selection"]["device"],
        "probes": r["selection"]["probes"],
        "load_s": r["load_s"],
        "wall_s": round(wall, 1),
        "results": {
            str(x["batch_size"]): {"p50_ms": x["p50_ms"], "throughput": x["throughput"]}
            for x in r["results"]
        },
    }


def summarise(row: dict) -> dict:
    if "error" in row:
        return row
    res = row["results"]
    best = max(res, key=lambda b: res[b]["throughput"])
    return {**row, "b1_p50_ms": res["1"]["p50_ms"], "best_img_s": res[best]["throughput"],
            "best_batch": int(best)}  # fmt: skip


def plot(rows: list[dict], path: Path, cpu: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    labels = [f"{r['label']}\n{r['file']}" for r in ok]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(ok) + 2))
    axes[0].barh(labels, [r["b1_p50_ms"] for r in ok], color="tab:blue")
    axes[0].set_xlabel("batch-1 p50 latency (ms, lower is better)")
    axes[1].barh(labels, [r["best_img_s"] for r in ok], color="tab:green")
    axes[1].set_xlabel("best throughput over batch 1-8 (img/s)")
    axes[1].set_yticks([])
    for ax in axes:
        ax.invert_yaxis()
    fig.suptitle(f"VGG16 224x224 execution providers on {cpu}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    repo = ROOT / "build" / "bench-export" / "repo"
    p.add_argument("--fp32", default=str(repo / "vgg16-fp32" / "1" / "model.onnx"))
    p.add_argument("--int8", default=str(repo / "vgg16-int8" / "1" / "model.onnx"))
    p.add_argument("--batch-sizes", default="1,2,4,8", help="best throughput is over these")
    p.add_argument("--seconds", type=float, default=2.0, help="per engine per batch size")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "providers.json"))
    args = p.parse_args()
    files = {"int8": Path(args.int8), "fp32": Path(args.fp32)}
    for f in files.values():
        if not f.is_file():
            raise SystemExit(f"{f} is missing: run benchmarks/export_variants.py first")
    me = Path(sys.executable)
    ort_ov, ov_api = venv_python("ort-openvino"), venv_python("openvino")
    tmp = CACHE / "provider-bench"
    tmp.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    plan = [
        ("ORT CPU EP", lambda m: worker(me, "ort-cpu", m, args)),
        ("ORT + OpenVINO plugin EP", lambda m: worker(me, "ort-openvino-plugin", m, args)),
        ("ORT-openvino build, OpenVINO EP", lambda m: worker(ort_ov, "ort-openvino-builtin", m, args)),
        ("OpenVINO Python API", lambda m: worker(ov_api, "openvino-api", m, args)),
        ("tl2edge bench --device auto", lambda m: tl2edge_auto(me, m, args, tmp)),
        ("tl2edge bench --device auto (ORT-openvino)", lambda m: tl2edge_auto(ort_ov, m, args, tmp)),
    ]  # fmt: skip
    for variant, model in files.items():
        for label, run in plan:
            print(f"{variant}: {label} ...", flush=True)
            rows.append({"label": label, "file": variant, **summarise(run(model))})
    cpu = cpu_name()
    print(f"\nVGG16 224x224 on {cpu} (shared machine; one run, engines one after another)")
    print(
        f"{'engine':44} {'file':5} {'b1 p50 ms':>10} {'best img/s':>11} {'@b':>3} {'vs OV p50':>9}  notes"
    )
    for r in rows:
        if "error" in r:
            print(
                f"{r['label']:44} {r['file']:5} {'-':>10} {'-':>11} {'':>3} {'':>9}  {r['error']}"
            )
            continue
        ov = next((x for x in rows if x["label"] == "OpenVINO Python API" and x["file"] == r["file"]
                   and "error" not in x), None)  # fmt: skip
        ratio = f"{r['b1_p50_ms'] / ov['b1_p50_ms']:.2f}x" if ov else "-"
        note = f"chose {r['chosen']}, load {r['load_s']:.2f} s" if "chosen" in r else ""
        if "precision" in r:
            note = f"precision {r['precision']}"
        print(f"{r['label']:44} {r['file']:5} {r['b1_p50_ms']:10.1f} {r['best_img_s']:11.1f} "
              f"{r['best_batch']:3d} {ratio:>9}  {note}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"cpu": cpu, "python": platform.python_version()}, "rows": rows,
              "batch_sizes": args.batch_sizes, "seconds": args.seconds}  # fmt: skip
    out.write_text(json.dumps(result, indent=2))
    plot(rows, out.with_suffix(".png"), cpu)
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
