"""The up-front check of a streamed folder (read, hash, decode every file once), three ways.

    .venv/bin/python benchmarks/check_throughput.py --images 600 --rounds 3

Writes a folder of camera-sized JPEGs (640x480, from the synthetic target task), then times
`load_data(pipeline="stream")` at --image-size with one thread (as before the pass was
parallel), with every core, and with every core plus the digests a `--data-cache` folder
records (files it already holds are read and hashed, not decoded). Rounds alternate; prints
medians, writes JSON to benchmarks/results/check_throughput.json.
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="build/check_throughput")
    parser.add_argument("--out", default="benchmarks/results/check_throughput.json")
    args = parser.parse_args()

    from PIL import Image

    from tl2edge.host import cpu_name
    from tl2edge.synth import write_dataset
    from tl2edge.train import data
    from tl2edge.train.cache import cache_data, checked_digests

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    small = write_dataset(
        work / "png", task="target", per_class=args.images // 5, size=64, seed=0, progress=False
    )
    folder = work / "jpeg"
    for png in sorted(small.rglob("*.png")):
        dest = folder / png.parent.name / f"{png.stem}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").resize((640, 480)).save(dest, quality=90)
    n = sum(1 for _ in folder.rglob("*.jpg"))
    cache = work / "cache"
    cache_data(data.load_data(folder, image_size=args.image_size, pipeline="stream"), cache)
    known = checked_digests(cache)

    def check(threads: int, checked) -> float:
        data.THREADS = threads
        t0 = time.perf_counter()
        data.load_data(folder, image_size=args.image_size, pipeline="stream", checked=checked)
        return time.perf_counter() - t0

    cores = os.cpu_count() or 1
    ways = {
        "one thread (serial)": (1, frozenset()),
        f"{cores} threads": (cores, frozenset()),
        f"{cores} threads, cached files not decoded": (cores, known),
    }
    seconds = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, (threads, checked) in ways.items():
            seconds[name].append(check(threads, checked))
    rows = []
    base = statistics.median(seconds["one thread (serial)"])
    for name, times in seconds.items():
        median = statistics.median(times)
        rows.append(
            {
                "way": name,
                "median_s": round(median, 3),
                "img_per_s": round(n / median, 1),
                "speedup": round(base / median, 2),
            }
        )
        print(f"{name:45s} {median:7.2f} s  {n / median:8.1f} img/s  {base / median:5.2f}x")
    result = {
        "machine": {"cpu": cpu_name(), "cores": cores, "python": platform.python_version()},
        "images": n,
        "source": "JPEG 640x480, quality 90",
        "image_size": args.image_size,
        "rounds": args.rounds,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
