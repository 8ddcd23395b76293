"""`tl2edge data synth OUT`: write the built-in synthetic image folders."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("tl2edge.data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = sub.add_parser("synth", help="write a synthetic image folder (one sub-folder per class)")
    p.add_argument("out", help="output folder (created; refused if it exists and is not empty)")
    p.add_argument(
        "--task",
        choices=["source", "procedural", "target", "glyphs"],
        default="target",
        help="source: 10 shape/texture classes; procedural: 53 classes (the source's, IFS fractals, "
        "filtered noise, Gabor fields, dead leaves) that the shipped backbone is pretrained on; "
        "target: 5 other shape/texture classes (default); "
        "glyphs: 10 digits/letters in matplotlib's DejaVu fonts, unlike the source (needs matplotlib)",
    )
    p.add_argument("--per-class", type=int, default=20, help="images per class (default 20)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images (default 0)")
    p.add_argument(
        "--classes", type=int, default=None, help="use only the first N classes of the task"
    )
    p.add_argument("--format", dest="image_format", choices=["png", "jpg"], default="png")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from tl2edge.synth import TASKS, write_dataset

    out = write_dataset(
        args.out,
        task=args.task,
        per_class=args.per_class,
        size=args.size,
        seed=args.seed,
        classes=args.classes,
        image_format=args.image_format,
        overwrite=args.overwrite,
    )
    n_classes = args.classes or len(TASKS[args.task])
    log.info(
        "wrote %d images (%d classes x %d) to %s",
        n_classes * args.per_class,
        n_classes,
        args.per_class,
        out,
    )
    print(f"Next: tl2edge train {out} --out runs/{args.task}")
    return 0
