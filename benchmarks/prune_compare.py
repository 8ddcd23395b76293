"""Pruned runs of one parent, head to head: fp32 and int8 ONNX as `tl2edge export` makes them,
batch-1 latency and batch-8 throughput with every model alternating in one process.

    .venv/bin/python benchmarks/prune_compare.py PARENT_RUN PRUNED_RUN [PRUNED_RUN ...] \\
        --out benchmarks/results/prune_compare.json

Separate prune runs each measure against their own parent, minutes apart; on a shared machine
the parent's own throughput moved by 60 % between two such runs, more than the difference
being compared. Here every model sees the same load: medians of --rounds alternating rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("parent", type=Path)
    parser.add_argument("pruned", type=Path, nargs="+")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=7.0, help="per model, over all rounds")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/prune_compare.json"))
    args = parser.parse_args()

    from tl2edge.logs import quiet_tensorflow, setup_logging

    setup_logging("INFO", "text")
    quiet_tensorflow("INFO")
    print(
        json.dumps(
            compare(
                args.parent,
                args.pruned,
                rounds=args.rounds,
                seconds=args.seconds,
                out=Path(args.out),
            ),
            indent=2,
        )
    )


def compare(parent: Path, pruned: list[Path], *, rounds: int, seconds: float, out: Path) -> dict:
    from tl2edge.export.rundir import load_keras_model, open_run
    from tl2edge.train.prune_fit import LINEAGE_FILE, read_parent
    from tl2edge.train.prune_output import export_like, ratios, time_variants

    run, _, parent_model, data = read_parent(parent)
    models = {"parent": parent_model}
    runs = {}
    for path in pruned:
        lineage = json.loads((path / LINEAGE_FILE).read_text())
        if Path(lineage["parent"]) != parent.resolve():
            raise SystemExit(f"{path} was pruned from {lineage['parent']}, not {parent}")
        models[path.name] = load_keras_model(open_run(path))
        record = json.loads((path / "run.json").read_text())
        runs[path.name] = {
            "run_dir": str(path),
            "cost_weight": lineage.get("cost_weight", 0.0),
            "method": lineage["method"],
            "flops_ratio": lineage["speedup"],
            "filters": {k: v["filters"] for k, v in lineage["layers"].items()},
            "val_accuracy": lineage["rounds"][-1]["accuracy"],
            "prune_s": record["timings"]["prune_s"],
        }
    with tempfile.TemporaryDirectory() as work:
        made = export_like(models, data, work=Path(work), image_size=run.image_size, seconds=2.0)
        measured = time_variants(made, device="cpu", seconds=seconds, rounds=rounds)
    v = measured["variants"]
    for name, row in runs.items():
        row["val_accuracy_parent"] = json.loads((Path(row["run_dir"]) / LINEAGE_FILE).read_text())[
            "parent_val_accuracy"
        ]
        row["drop_points"] = round((row["val_accuracy_parent"] - row["val_accuracy"]) * 100, 2)
        for prec, r in ratios(v, name).items():
            row[f"{prec}_latency_b1_ratio"] = round(r["latency_b1"], 3)
            row[f"{prec}_throughput_b8_ratio"] = round(r["throughput_b8"], 3)
            row[f"{prec}_size_ratio"] = round(r["size"], 3)
    result = {
        "parent": str(parent),
        "runs": runs,
        **measured,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
