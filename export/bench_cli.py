"""`tl2edge bench MODEL`: latency and throughput of an ONNX model (a file or a repository entry).

MODEL is a .onnx file, a version folder (REPO/NAME/VERSION) or a model folder (REPO/NAME:
its highest version). Inputs are random pixels of the model's input shape (the latency of a
CNN does not depend on pixel values). `--keras RUN_DIR` times that run's Keras model on the
same inputs, side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tl2edge.errors import UserError

log = logging.getLogger("tl2edge.export")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("model", help="model.onnx, REPO/NAME/VERSION or REPO/NAME (highest version)")
    p.add_argument(
        "--device",
        default="cpu",
        help="auto | cpu | openvino | cuda | tensorrt (default %(default)s); auto measures "
        "the available providers and keeps the fastest, the others fail when unavailable",
    )
    from tl2edge.serve.cli import add_openvino_arguments

    add_openvino_arguments(p)
    p.add_argument(
        "--threads", type=int, default=0, help="intra-op threads, 0 = ORT default (all cores)"
    )
    p.add_argument(
        "--batch-sizes", default="1,8", help="comma-separated batch sizes (default %(default)s)"
    )
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed runs per batch size (default %(default)s)"
    )
    p.add_argument(
        "--seconds", type=float, default=3.0, help="time per batch size (default %(default)s)"
    )
    p.add_argument("--keras", metavar="RUN_DIR", help="also time this run's Keras model (predict)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch-sizes must be positive integers, e.g. 1,8; got {text!r}")
    return sizes


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from tl2edge.export import bench

    sizes = _batch_sizes(args.batch_sizes)
    if args.threads < 0:
        raise UserError(f"--threads must be 0 (ORT default) or more, got {args.threads}")
    if args.seconds <= 0 or args.warmup < 0:
        raise UserError("--seconds must be positive and --warmup not negative")
    from tl2edge.manifest import resolve_model

    path = resolve_model(args.model)
    import time

    from tl2edge.serve.cli import openvino_config

    t0 = time.perf_counter()
    selection = bench.make_selection(
        path, device=args.device, threads=args.threads, **openvino_config(args)
    )
    load_s = time.perf_counter() - t0
    session = selection.session
    providers = session.get_providers()
    spec = session.get_inputs()[0]
    if (
        spec.type != "tensor(uint8)"
        or len(spec.shape) != 4
        or not all(isinstance(d, int) for d in spec.shape[1:])
    ):
        raise UserError(
            f"{path}: input {spec.name} is {spec.type} {spec.shape}; bench expects uint8 "
            "[batch, H, W, 3] (a tl2edge export)"
        )
    images = np.random.default_rng(0).integers(0, 256, (max(sizes), *spec.shape[1:]), np.uint8)
    rows = [
        ("onnx", t)
        for t in bench.bench_session(
            session, images, sizes, warmup=args.warmup, seconds=args.seconds
        )
    ]
    if args.keras:
        from tl2edge.export.rundir import load_keras_model, open_run

        model = load_keras_model(open_run(args.keras))
        if tuple(model.input_shape[1:]) != tuple(spec.shape[1:]):
            raise UserError(
                f"--keras {args.keras}: input {model.input_shape[1:]} differs from the ONNX "
                f"model's {spec.shape[1:]}"
            )
        rows += [
            ("keras", t)
            for t in bench.bench_keras(
                model, images, sizes, warmup=args.warmup, seconds=args.seconds
            )
        ]
    print(
        f"{path}  device={args.device}  providers={','.join(providers)}  threads={args.threads or 'default'}"
        f"  load {load_s:.2f} s"
    )
    if selection.probes:
        print(selection.table())
    print(
        f"{'runtime':8} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>9} {'n':>5}"
    )
    for runtime, t in rows:
        print(
            f"{runtime:8} {t.batch_size:5d} {t.p50_ms:9.2f} {t.p90_ms:9.2f} {t.p99_ms:9.2f} "
            f"{t.throughput:9.1f} {t.iterations:5d}"
        )
    if args.json:
        out = {
            "model": str(path),
            "device": args.device,
            "providers": providers,
            "selection": selection.to_dict(),
            "load_s": round(load_s, 3),
            "threads": args.threads,
            "results": [{"runtime": r, **t.to_dict()} for r, t in rows],
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0
