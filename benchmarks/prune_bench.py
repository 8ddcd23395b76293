"""`tl2edge prune --target-speedup 3` on the demo's near task at 32 px, measured end to end.

    .venv/bin/python benchmarks/prune_bench.py --work /tmp/prune-bench

1. Writes the synthetic target task (5 classes x --per-class images, 32 px) unless present.
2. Trains the parent like `tl2edge demo` (shipped backbone, head then top block) unless
   present.
3. Prunes it (timed) once per --cost-weight, each with the report's ONNX measurement (fp32
   and int8 as `tl2edge export` makes them): parent and pruned alternate on the same provider
   in one process, medians of 3 rounds.
Prints the figures and writes JSON (one row, or a list of rows with several --cost-weight
values) to benchmarks/results/prune.json. The machine may be shared: compare the ratios of
one run, not absolute times across runs.

    .venv/bin/python benchmarks/prune_bench.py --cost-weight 0 0.5 \
        --out benchmarks/results/prune_cost_weight.json
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
    parser.add_argument("--epochs", type=int, help="per step (default: tl2edge prune's)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--cost-weight",
        type=float,
        nargs="+",
        help="one prune per value, same parent (default: prune's default)",
    )
    parser.add_argument("--bench-seconds", type=float, default=3.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/prune.json"))
    args = parser.parse_args()

    from tl2edge.logs import quiet_tensorflow, setup_logging

    setup_logging("INFO", "text")
    quiet_tensorflow("INFO")  # TF log level and logger; its stderr filter is not needed here
    work = Path(args.work)
    t = time.perf_counter()
    parent = ensure_parent(work, args.per_class)
    t_parent = time.perf_counter() - t
    from tl2edge.cli import field_default
    from tl2edge.train.prune_fit import PruneConfig

    weights = args.cost_weight or [field_default(PruneConfig, "cost_weight")]
    rows = []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for beta in weights:
        rows.append(bench_one(args, parent, beta, parent_train_s=t_parent))
        for k, v in rows[-1].items():
            if k not in ("variants", "filters"):
                print(f"{k:>26}: {v}")
        # Written after every prune: a long comparison keeps what it has measured so far.
        Path(args.out).write_text(json.dumps(rows[0] if len(weights) == 1 else rows, indent=2))


def bench_one(args, parent: Path, cost_weight: float, *, parent_train_s: float) -> dict:
    from tl2edge.train.prune_fit import prune

    name = f"pruned-{args.method}-{args.target_speedup:g}x-cw{cost_weight:g}"
    result = prune(
        parent,
        out=Path(args.work) / name,
        target_speedup=args.target_speedup,
        method=args.method,
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr,
        cost_weight=cost_weight,
        bench_seconds=args.bench_seconds,
        overwrite=True,
    )
    m = result.measured

    def ratio(prec: str, key: str) -> float | None:
        r = m["ratios"].get(prec)  # no int8 ratio when export's int8 gate fails
        return None if r is None else round(r[key], 3)

    return {
        "task": f"synthetic target (near), 5 classes x {args.per_class}, 32 px",
        "method": args.method,
        "cost_weight": cost_weight,
        "steps": args.steps,
        "epochs_per_step": result.rounds[-1].epochs,
        "lr": args.lr,
        "flops_ratio": round(result.speedup, 3),
        "val_accuracy_parent": result.parent_accuracy,
        "val_accuracy_pruned": result.accuracy,
        "drop_points": round((result.parent_accuracy - result.accuracy) * 100, 2),
        "int8_latency_b1_ratio": ratio("int8", "latency_b1"),
        "int8_throughput_b8_ratio": ratio("int8", "throughput_b8"),
        "fp32_latency_b1_ratio": ratio("fp32", "latency_b1"),
        "fp32_throughput_b8_ratio": ratio("fp32", "throughput_b8"),
        "int8_size_ratio": ratio("int8", "size"),
        "int8_recipe": m["int8_recipe"],
        "int8_failed": m["int8_failed"],
        "filters": result.rounds[-1].filters,
        "variants": m["variants"],
        "provider": m["provider"],
        "prune_wall_s": result.seconds,
        "parent_train_s": round(parent_train_s, 1),
        "stopped": result.stopped,
        "cpu": m["cpu"],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def ensure_parent(work: Path, per_class: int) -> Path:
    """The synthetic near task and a parent trained on it like `tl2edge demo`, unless present."""
    from tl2edge.synth import write_dataset
    from tl2edge.train.config import TrainConfig
    from tl2edge.train.fit import train

    data = work / "data"
    if not data.is_dir():
        write_dataset(data, task="target", per_class=per_class, size=32, seed=7)
    parent = work / "parent"
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
    return parent


if __name__ == "__main__":
    main()
