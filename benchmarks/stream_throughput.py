"""Training images/s with the streaming data pipeline (uncached and cached) against the in-memory one.

    .venv/bin/python benchmarks/stream_throughput.py --image-size 32 --per-class 100 --rounds 3

Writes a synthetic folder, loads it three ways (`load_data(pipeline=memory|stream)`, and the
stream with `--data-cache`: decoded once into a memory-mapped file), then alternates
one-epoch `fit` rounds of the same model on each dataset (head phase: the fastest step,
where input costs show most) and, separately, iterates each dataset alone. Prints medians
and the ratios to memory; writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="build/stream_throughput")
    parser.add_argument("--out", default="benchmarks/results/stream_throughput.json")
    args = parser.parse_args()

    import keras

    from tl2edge.logs import quiet_tensorflow
    from tl2edge.synth import write_dataset
    from tl2edge.train import model as vgg
    from tl2edge.train.cache import cache_data
    from tl2edge.train.data import load_data, make_dataset

    quiet_tensorflow("INFO")  # TF log level and logger; its stderr filter is not needed here
    folder = write_dataset(
        Path(args.work) / "data",
        task="target",
        per_class=args.per_class,
        size=args.image_size,
        seed=0,
        overwrite=True,
        progress=False,
    )
    datasets = {}
    for pipeline in ("memory", "stream", "cached"):
        data = load_data(
            folder,
            image_size=args.image_size,
            seed=0,
            pipeline="memory" if pipeline == "memory" else "stream",
        )
        if pipeline == "cached":
            cache_dir = Path(args.work) / "cache"
            shutil.rmtree(cache_dir, ignore_errors=True)  # time the build too
            t = time.perf_counter()
            data = cache_data(data, cache_dir)
            cache_build_s = time.perf_counter() - t
        datasets[pipeline] = make_dataset(
            data.train, batch_size=args.batch_size, training=True, seed=0
        )
    n = len(data.train)
    model = vgg.build_model(len(data.classes), image_size=args.image_size)
    vgg.set_trainable(model, "frozen")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    for ds in datasets.values():  # tracing and warm-up
        model.fit(ds, epochs=1, verbose=0)
    fit_s: dict[str, list[float]] = {k: [] for k in datasets}
    iterate_s: dict[str, list[float]] = {k: [] for k in datasets}
    for _ in range(args.rounds):  # interleaved, so both see the same machine load
        for pipeline, ds in datasets.items():
            t = time.perf_counter()
            model.fit(ds, epochs=1, verbose=0)
            fit_s[pipeline].append(time.perf_counter() - t)
            t = time.perf_counter()
            for _batch in ds:
                pass
            iterate_s[pipeline].append(time.perf_counter() - t)
    result = {
        "machine": _cpu_model() or platform.processor() or platform.machine(),
        "image_size": args.image_size,
        "train_images": n,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "fit_images_per_s": {k: n / statistics.median(v) for k, v in fit_s.items()},
        "pipeline_images_per_s": {k: n / statistics.median(v) for k, v in iterate_s.items()},
        "cache_build_s": cache_build_s,  # decoding the training and validation images once
    }
    for k in ("stream", "cached"):
        for what in ("fit", "pipeline"):
            result[f"{what}_ratio_{k}_over_memory"] = (
                result[f"{what}_images_per_s"][k] / result[f"{what}_images_per_s"]["memory"]
            )
    print(
        f"{n} training images at {args.image_size}px, batch {args.batch_size}, medians of {args.rounds}"
    )
    print(f"{'pipeline':<8} {'fit img/s':>10} {'data only img/s':>16}")
    for k in datasets:
        print(
            f"{k:<8} {result['fit_images_per_s'][k]:>10.1f} {result['pipeline_images_per_s'][k]:>16.1f}"
        )
    for k in ("stream", "cached"):
        print(
            f"{k} / memory: fit {result[f'fit_ratio_{k}_over_memory']:.2f}, "
            f"data only {result[f'pipeline_ratio_{k}_over_memory']:.2f}"
        )
    print(f"cache built in {cache_build_s:.1f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


if __name__ == "__main__":
    main()
