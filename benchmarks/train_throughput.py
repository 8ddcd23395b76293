"""Training throughput of tl2edge's VGG16 (images/s), per phase set-up and precision.

    .venv/bin/python benchmarks/train_throughput.py --image-size 32 --batch-size 32
    .venv/bin/python benchmarks/train_throughput.py --image-size 224 --batch-size 16 --steps 5

Measures `fit` steps on random pixels (decoding excluded) with the backbone frozen (the head
phase), the top block trainable (fine-tune) and every layer trainable (from scratch), in
float32 and, where a GPU exists, mixed float16. Prints a table, writes JSON to
benchmarks/results/. Timings are medians over steps after warm-up; compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def measure(*, image_size: int, batch_size: int, steps: int, backbone, mixed: bool) -> dict:
    import keras
    import numpy as np

    from tl2edge.train.model import build_model, set_trainable

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    model = build_model(10, image_size=image_size)
    set_trainable(model, backbone)
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch_size, image_size, image_size, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch_size)
    for _ in range(2):  # warm-up: tracing, allocator
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
    keras.mixed_precision.set_global_policy("float32")
    median = statistics.median(times)
    return {"median_step_s": median, "images_per_s": batch_size / median}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()

    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    precisions = [False, True] if gpu else [False]
    rows = []
    for label, backbone in (
        ("head (backbone frozen)", "frozen"),
        ("fine-tune (top block)", 1),
        ("all layers (scratch)", "all"),
    ):
        for mixed in precisions:
            r = measure(
                image_size=args.image_size,
                batch_size=args.batch_size,
                steps=args.steps,
                backbone=backbone,
                mixed=mixed,
            )
            rows.append({"setup": label, "precision": "mixed_float16" if mixed else "float32", **r})
            print(
                f"{label:<24} {rows[-1]['precision']:<14} {r['images_per_s']:>8.1f} img/s  (median step {1000 * r['median_step_s']:.0f} ms)",
                flush=True,
            )
    if not gpu:
        print("no GPU: mixed precision not measured (it only pays off on GPUs with tensor cores)")
    result = {
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "device": "GPU" if gpu else "CPU",
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "tensorflow": tf.__version__,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
