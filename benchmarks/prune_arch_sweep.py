"""What the int8 time of a pruned VGG follows: FLOPs split or channel counts (speed only).

    .venv/bin/python benchmarks/prune_arch_sweep.py PARENT_RUN \\
        --out benchmarks/results/prune_arch_sweep.json

One-shot selections at --target-speedup for several --cost-weight values (Taylor importance
on 512 training images of the parent), and the same selections with every layer's count
rounded to a multiple of 16 (the most important filters kept). Weights are copied, not
fine-tuned: only speed is compared. Each model as int8 QDQ with the recipe export chose for
both the parent and the pruned runs on this machine (u8s8-reduce-range), batch-1 latency and
batch-8 throughput alternating over all models, medians of --rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("parent", type=Path)
    parser.add_argument("--target-speedup", type=float, default=3.0)
    parser.add_argument("--cost-weight", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--multiple", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/prune_arch_sweep.json"))
    args = parser.parse_args()

    from tl2edge.export import bench, quantize, rundir
    from tl2edge.export.api import convert
    from tl2edge.host import cpu_name
    from tl2edge.train import prune as surgery
    from tl2edge.train.prune_fit import read_parent

    _, cfg, model, data = read_parent(args.parent)
    rng = np.random.default_rng(cfg.seed)
    idx = np.sort(rng.choice(len(data.train), min(512, len(data.train)), replace=False))
    scores = surgery.taylor_scores(model, data.train.pixels(idx), data.train.y[idx])
    count = surgery.flops_counter(model)
    parent = surgery.filter_counts(model)
    floor = surgery.floors(model, parent, 0.1)
    ranked = surgery.normalize(scores)
    selections = {"parent": {k: np.arange(n) for k, n in parent.items()}}
    for beta in args.cost_weight:
        keep = surgery.choose_filters(
            scores,
            count,
            target_flops=count(parent) / args.target_speedup,
            floor=floor,
            cost_weight=beta,
        )
        selections[f"cw{beta:g}"] = keep
        selections[f"cw{beta:g}-r{args.multiple}"] = {
            k: np.sort(
                np.argsort(ranked[k])[::-1][
                    : max(args.multiple, round(len(v) / args.multiple) * args.multiple)
                ]
            )
            for k, v in keep.items()
        }

    train, val = rundir.run_images(data, image_size=int(model.input.shape[1]))
    calib = rundir.sample(train, 128, seed=0)
    sessions, rows = {}, {}
    with tempfile.TemporaryDirectory() as work:
        for name, keep in selections.items():
            pruned = model if name == "parent" else surgery.prune_model(model, keep)
            folder = Path(work) / name
            folder.mkdir()
            fp32 = convert(pruned, folder, opset=17)
            quantize.preprocess(fp32, folder / "prepared.onnx")
            quantize.quantize_int8(
                folder / "prepared.onnx",
                folder / "int8.onnx",
                calib,
                quantize.PRESETS["u8s8-reduce-range"],
                cache_dir=folder,
            )
            sessions[name] = bench.make_session(folder / "int8.onnx")
            filters = {k: len(v) for k, v in keep.items()}
            rows[name] = {
                "flops_ratio": round(count(parent) / count(filters), 3),
                "filters": list(filters.values()),
            }
        times = {k: {"b1": [], "b8": []} for k in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                b1, b8 = bench.bench_session(session, val.x[:8], (1, 8), seconds=1.0)
                times[name]["b1"].append(b1.p50_ms)
                times[name]["b8"].append(b8.throughput)
    base = {k: statistics.median(v) for k, v in times["parent"].items()}
    for name, row in rows.items():
        b1, b8 = statistics.median(times[name]["b1"]), statistics.median(times[name]["b8"])
        row |= {
            "int8_latency_b1_ms": b1,
            "int8_throughput_b8": b8,
            "int8_latency_b1_ratio": round(b1 / base["b1"], 3),
            "int8_throughput_b8_ratio": round(b8 / base["b8"], 3),
        }
        print(
            f"{name:>14}: {row['flops_ratio']:.2f}x fewer FLOPs, int8 b1 {b1:.2f} ms "
            f"({row['int8_latency_b1_ratio']:.2f}x), b8 {b8:.0f} img/s "
            f"({row['int8_throughput_b8_ratio']:.2f}x)"
        )
    result = {"parent": str(args.parent), "cpu": cpu_name(), "rounds": args.rounds, "models": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
