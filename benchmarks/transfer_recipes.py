"""Transfer recipes side by side: validation and held-out accuracy per --strategy and task.

    .venv/bin/python benchmarks/transfer_recipes.py            # near + far, 30 and 150 per class

Tasks at 32 px: `near` is the demo's target task (5 shape classes, same visual vocabulary as
the source the shipped backbone was pretrained on); `far` is the glyphs task (10 digits and
letters, unlike the source). Every recipe gets the same epochs (head + fine-tune, or all of
them from scratch with --weights none), one seed. Prints a table, writes JSON to
benchmarks/results/transfer_recipes.json and a PNG bar chart beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from tl2edge.host import cpu_name

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
BACKBONE = ROOT / "tl2edge" / "assets" / "vgg16_synth_source.npz"
TASKS = {"near": "target", "far": "glyphs"}

# name -> TrainConfig overrides (on top of the shared epochs, batch size and seed)
RECIPES = {
    "scratch (--weights none)": dict(weights="none"),
    "feature-extraction": dict(strategy="feature-extraction"),
    "fine-tune top 1, lr 1e-5, constant (old default)": dict(
        strategy="fine-tune", unfreeze_blocks=1, lr_finetune=1e-5, schedule="constant"
    ),
    "fine-tune top 2, lr 1e-4, warm-up+cosine": dict(
        strategy="fine-tune", unfreeze_blocks=2, schedule="warmup-cosine"
    ),
    "all-blocks, lr 1e-4, constant (default)": dict(strategy="all-blocks"),
    "all-blocks, lr 1e-4, warm-up+cosine": dict(strategy="all-blocks", schedule="warmup-cosine"),
    "discriminative x0.5, lr 1e-4, warm-up+cosine": dict(
        strategy="discriminative", schedule="warmup-cosine"
    ),
}


def _test_accuracy(run: Path, test_dir: Path, size: int) -> float:
    import numpy as np

    from tl2edge.images import decode_rgb, scan_image_folder
    from tl2edge.rundir import RunDir
    from tl2edge.train.model import load_inference_model

    folder = scan_image_folder(test_dir)
    x = np.stack([decode_rgb(p, size) for p, _ in folder.files]).astype(np.float32)
    y = np.array([label for _, label in folder.files])
    probs = load_inference_model(RunDir.open(run).model_path).predict(x, verbose=0, batch_size=64)
    return float((probs.argmax(1) == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, nargs="+", default=[30, 150])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--epochs-head", type=int, default=2)
    parser.add_argument("--epochs-finetune", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backbone", default=str(BACKBONE), help="pretrained backbone .npz (default: shipped)"
    )
    parser.add_argument(
        "--keep-runs", action="store_true", help="keep the run dirs under WORK/runs (to export)"
    )
    parser.add_argument("--work", default="build/transfer_recipes")
    parser.add_argument("--out", default="benchmarks/results/transfer_recipes.json")
    args = parser.parse_args()

    import keras

    from tl2edge.logs import quiet_tensorflow
    from tl2edge.rundir import HISTORY, RunDir
    from tl2edge.synth import write_dataset
    from tl2edge.train.config import TrainConfig
    from tl2edge.train.fit import train

    quiet_tensorflow("INFO")  # TF log level and logger; its stderr filter is not needed here
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    epochs = args.epochs_head + args.epochs_finetune
    rows = []
    for task in args.tasks:
        test = write_dataset(
            work / f"{task}-test", task=TASKS[task], per_class=40, size=32, seed=args.seed + 1000
        )
        for per_class in args.per_class:
            data = write_dataset(
                work / f"{task}-{per_class}",
                task=TASKS[task],
                per_class=per_class,
                size=32,
                seed=args.seed,
            )
            for name in args.recipes:
                overrides = dict(RECIPES[name])
                if overrides.get("strategy") == "feature-extraction":
                    overrides.update(epochs_head=epochs, epochs_finetune=0)
                cfg = TrainConfig(
                    **{
                        "data_dir": str(data),
                        "image_size": 32,
                        "weights": args.backbone,
                        "epochs_head": args.epochs_head,
                        "epochs_finetune": args.epochs_finetune,
                        "seed": args.seed,
                        "tensorboard": False,
                        **overrides,
                    }
                )
                keras.backend.clear_session()
                t = time.perf_counter()
                run = train(cfg, work / "runs" / f"{task}-{per_class}-{len(rows)}")
                seconds = time.perf_counter() - t
                record = RunDir.open(run).record()
                row = {
                    "task": task,
                    "per_class": per_class,
                    "recipe": name,
                    "backbone": Path(args.backbone).name if "weights" not in overrides else "none",
                    "val_accuracy": record["val_accuracy"],
                    "test_accuracy": _test_accuracy(run, test, 32),
                    "epochs_run": len(json.loads(RunDir.open(run).file(HISTORY).read_text())),
                    "train_s": round(seconds, 1),
                }
                rows.append(row)
                print(
                    f"{task:<5} {per_class:>4}/class  {name:<50} val {row['val_accuracy']:6.1%}  "
                    f"test {row['test_accuracy']:6.1%}  {row['epochs_run']:>2} ep  {seconds:6.1f} s",
                    flush=True,
                )
                if not args.keep_runs:
                    shutil.rmtree(run)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "cpu": cpu_name(),
                "command": " ".join(["benchmarks/transfer_recipes.py", *sys.argv[1:]]),
                "backbone": args.backbone,
                "epochs": {"head": args.epochs_head, "finetune": args.epochs_finetune},
                "seed": args.seed,
                "rows": rows,
            },
            indent=2,
        )
    )
    _plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["task"], r["per_class"]) for r in rows})
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(recipes)
    for i, name in enumerate(recipes):
        values = [
            next(
                (
                    r["test_accuracy"]
                    for r in rows
                    if (r["task"], r["per_class"]) == g and r["recipe"] == name
                ),
                0.0,
            )
            for g in groups
        ]
        ax.bar([k + i * width for k in range(len(groups))], values, width, label=name)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(groups))])
    ax.set_xticklabels([f"{t}, {n}/class" for t, n in groups])
    ax.set_ylabel("held-out test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Transfer recipes from the shipped backbone, same epochs (32 px)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
