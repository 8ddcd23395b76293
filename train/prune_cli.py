"""`tl2edge prune RUN_DIR --out NEW_RUN_DIR --target-speedup S`: a thin layer over
`tl2edge.train.prune_fit.prune`."""

from __future__ import annotations

import argparse
import functools

from tl2edge.cli import field_default
from tl2edge.train.prune import METHODS, NORMS
from tl2edge.train.prune_fit import MAX_AUTO_EPOCHS, MIN_UPDATES, PruneConfig

_default = functools.partial(field_default, PruneConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("run_dir", help="a finished run dir of `tl2edge train` (the parent)")
    p.add_argument("--out", required=True, help="new run dir to create for the pruned model")
    p.add_argument(
        "--target-speedup",
        type=float,
        required=True,
        help="FLOPs of the parent / FLOPs of the result, greater than 1 (e.g. 3)",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default=_default("method"),
        help="filter importance: norm (kernel norm) or taylor (|activation x gradient| on "
        "training images); default %(default)s",
    )
    p.add_argument(
        "--norm",
        choices=NORMS,
        default=_default("norm"),
        help="with --method norm (default %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=_default("steps"),
        help="prune + fine-tune rounds, each a geometric share of the speedup (default %(default)s)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=_default("epochs"),
        help=f"fine-tuning epochs after each step; the epoch with the lowest validation loss is "
        f"kept (default: enough for {MIN_UPDATES} optimizer updates, 2 to {MAX_AUTO_EPOCHS} "
        "epochs, so small datasets are not under-trained)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=_default("lr"),
        help="Adam learning rate of the fine-tuning, every layer trainable (default %(default)s)",
    )
    p.add_argument("--batch-size", type=int, help="default: the parent run's")
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        help="percentage points of validation accuracy the result may lose against the parent; "
        "a step beyond it stops the schedule and the last step within it is kept",
    )
    p.add_argument(
        "--taylor-images",
        type=int,
        default=_default("taylor_images"),
        help="training images used by --method taylor (default %(default)s)",
    )
    p.add_argument(
        "--min-keep",
        type=float,
        default=_default("min_keep"),
        help="fraction of each layer's filters that always stays (default %(default)s)",
    )
    p.add_argument(
        "--cost-weight",
        type=float,
        default=_default("cost_weight"),
        metavar="BETA",
        help="rank filters by importance / (FLOPs their removal saves)^BETA, so filters of "
        "early layers with large maps, which cost the most compute, go first at equal "
        "importance: 0 ranks by importance alone (late 512-filter layers are cut hardest, "
        "which saves weights more than compute), 1 by importance per FLOP; in [0, 2] "
        "(default %(default)s)",
    )
    p.add_argument(
        "--channel-multiple",
        type=int,
        default=_default("channel_multiple"),
        metavar="M",
        help="drop filters M at a time from layers whose width is a multiple of M, so widths "
        "stay multiples of M (int8 kernels run faster on them); 1: any width "
        "(default %(default)s)",
    )
    p.add_argument(
        "--no-measure",
        action="store_true",
        help="skip the ONNX fp32/int8 size, latency and throughput comparison in the report",
    )
    p.add_argument(
        "--device",
        default=_default("device"),
        help="execution provider for the measurement: auto | cpu | cuda | tensorrt (default %(default)s)",
    )
    p.add_argument(
        "--bench-seconds",
        type=float,
        default=_default("bench_seconds"),
        help="seconds per latency/throughput measurement (default %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    return PruneConfig(
        run_dir=args.run_dir,
        out=args.out,
        target_speedup=args.target_speedup,
        method=args.method,
        norm=args.norm,
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_accuracy_drop=args.max_accuracy_drop,
        taylor_images=args.taylor_images,
        min_keep=args.min_keep,
        cost_weight=args.cost_weight,
        channel_multiple=args.channel_multiple,
        measure=not args.no_measure,
        device=args.device,
        bench_seconds=args.bench_seconds,
        overwrite=args.overwrite,
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from tl2edge.train.prune_fit import run_prune

    result = run_prune(cfg)
    line = (
        f"{result.speedup:.2f}x fewer FLOPs, validation accuracy {result.accuracy:.2%} "
        f"(parent {result.parent_accuracy:.2%})"
    )
    if result.measured and "int8" in result.measured["ratios"]:
        r = result.measured["ratios"]["int8"]
        line += (
            f"; int8 latency b1 {r['latency_b1']:.2f}x, throughput b8 {r['throughput_b8']:.2f}x "
            f"of the parent's"
        )
    print(line)
    if result.stopped:
        print(f"stopped before the target: {result.stopped}")
    print(f"Next: {result.next_command}")
    return 0
