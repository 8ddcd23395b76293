"""`tl2edge evaluate MODEL DATA_DIR`: a thin layer over `tl2edge.export.evaluate.evaluate`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("model", help="model.onnx, REPO/NAME/VERSION or REPO/NAME (highest version)")
    p.add_argument("data_dir", help="labelled images, one sub-folder per class (names = labels)")
    p.add_argument("--out", help="write evaluation.json and confusion.png into this folder")
    p.add_argument(
        "--device",
        default="cpu",
        help="auto | cpu | openvino | cuda | tensorrt, or all: every available one, side by "
        "side with agreement with CPU (default %(default)s)",
    )
    from tl2edge.serve.cli import add_openvino_arguments

    add_openvino_arguments(p)
    p.add_argument(
        "--reference",
        metavar="MODEL",
        help="report top-1 agreement with this model (e.g. the fp32 variant, run on CPU)",
    )
    p.add_argument(
        "--batch-size", type=int, default=32, help="images per run (default %(default)s)"
    )
    p.add_argument(
        "--skip-bad-images", action="store_true", help="leave unreadable images out (counted)"
    )


def run(args: argparse.Namespace) -> int:
    from tl2edge.export.evaluate import evaluate
    from tl2edge.serve.cli import openvino_config

    result = evaluate(
        args.model, args.data_dir, out=args.out, device=args.device,
        batch_size=args.batch_size, skip_bad_images=args.skip_bad_images,
        reference=args.reference, runtime_options=openvino_config(args),
    )  # fmt: skip
    print(f"{result.model}")
    print(result.table())
    if result.skipped:
        print(f"{len(result.skipped)} unreadable image(s) skipped")
    return 0
