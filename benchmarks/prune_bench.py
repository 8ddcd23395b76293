"""`tl2edge prune --target-speedup 3` on the demo's near task at 32 px, measured end to end.

    .venv/bin/python benchmarks/prune_bench.py --work /tmp/prune-bench

1. Writes the synthetic target task (5 classes x --per-class images, 32 px) unless present.
2. Trains the parent like `tl2edge demo` (shipped backbone, head then top block) unless
   present.
3. Prunes it (timed) with the report's ONNX measurement: int8 (and fp32) parent and pruned
   alternate on the same provider in one process, medians of 3 rounds.
Prints the figures and writes JSON to benchmarks/results/prune.json. The machine may be
shared: compare the ratios of one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="/tmp/prune-bench")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--target-speedup", type=float, default=3.0)
    parser.add_argument("--method", default="taylor")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--bench-seconds", type=float, default=3.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/prune.json"))
    args = parser.parse_args()

    from tl2edge.logs import quiet_tensorflow, setup_logging

    setup_logging("INFO", "text")
    quiet_tensorflow("INFO")  # TF log level and logger; its stderr filter is not needed here
    from tl2edge.synth import write_dataset
    from tl2edge.train.config import TrainConfig
    from tl2edge.train.fit import train
    from tl2edge.train.prune_fit import prune

    work = Path(args.work)
    data = work / "data"
    if not data.is_dir():
        write_dataset(data, task="target", per_class=args.per_class, size=32, seed=7)
    parent = work / "parent"
    t = time.perf_counter()
    if not (parent / "state.json").is_file():
        train(
            TrainConfig(
                data_dir=str(data),
                image_size=32,
                weights=str(ROOT / "tl2edge" / "assets" / "vgg16_synth_source.npz"),
                strategy="fine-tune",
                unfreeze_blocks=1,
                epochs_head=8,
                epochs_finetune=4,
                lr_head=1e-3,
                lr_finetune=1e-4,
                batch_size=16,
                val_split=0.25,
                patience=4,
                seed=7,
                tensorboard=False,
            ),
            parent,
        )
    t_parent = time.perf_counter() - t
    name = f"pruned-{args.method}-{args.target_speedup:g}x"
    result = prune(
        parent,
        out=work / name,
        target_speedup=args.target_speedup,
        method=args.method,
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr,
        bench_seconds=args.bench_seconds,
        overwrite=True,
    )
    m = result.measured
    row = {
        "task": f"synthetic target (near), 5 classes x {args.per_class}, 32 px",
        "method": args.method,
        "steps": args.steps,
        "epochs_per_step": args.epochs,
        "lr": args.lr,
        "flops_ratio": round(result.speedup, 3),
        "val_accuracy_parent": result.parent_accuracy,
        "val_accuracy_pruned": result.accuracy,
        "drop_points": round((result.parent_accuracy - result.accuracy) * 100, 2),
        "int8_latency_b1_ratio": round(m["ratios"]["int8"]["latency_b1"], 3),
        "int8_throughput_b8_ratio": round(m["ratios"]["int8"]["throughput_b8"], 3),
        "fp32_latency_b1_ratio": round(m["ratios"]["fp32"]["latency_b1"], 3),
        "fp32_throughput_b8_ratio": round(m["ratios"]["fp32"]["throughput_b8"], 3),
        "int8_size_ratio": round(m["ratios"]["int8"]["size"], 3),
        "variants": m["variants"],
        "provider": m["provider"],
        "prune_wall_s": result.seconds,
        "parent_train_s": round(t_parent, 1),
        "stopped": result.stopped,
        "cpu": m["cpu"],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(row, indent=2))
    for k, v in row.items():
        if k != "variants":
            print(f"{k:>26}: {v}")


if __name__ == "__main__":
    main()
