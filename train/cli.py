"""`tl2edge train DATA_DIR --out RUN_DIR`: a thin layer over `tl2edge.train.fit.train`."""

from __future__ import annotations

import argparse
import functools

from tl2edge.cli import field_default
from tl2edge.train.config import TrainConfig
from tl2edge.train.recipes import SCHEDULES, STRATEGIES

_default = functools.partial(field_default, TrainConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("data_dir", help="image folder, one sub-folder per class (JPEG/PNG/BMP/GIF)")
    p.add_argument(
        "--out",
        required=True,
        help="run dir to create (Keras model, labels, split, run record, report.md, plots)",
    )
    p.add_argument(
        "--val-dir",
        help="separate validation folder with the same classes (default: split DATA_DIR)",
    )
    p.add_argument(
        "--val-split",
        type=float,
        default=_default("val_split"),
        help="validation fraction, stratified and seeded (default %(default)s)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=_default("image_size"),
        help="square input side, at least 32 (default %(default)s)",
    )
    p.add_argument(
        "--weights",
        default=_default("weights"),
        help="imagenet (Keras cache) | none (from scratch) | PATH (.npz/.weights.h5/.h5) | RUN_DIR (transfer its backbone); default %(default)s",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=_default("strategy"),
        help="after the head phase: all-blocks (every block at --lr-finetune), "
        "discriminative (lower blocks at lower lr), fine-tune (top --unfreeze-blocks only), "
        "feature-extraction (head only); default %(default)s",
    )
    p.add_argument(
        "--block-lr-ratio",
        type=float,
        default=_default("block_lr_ratio"),
        help="discriminative: lr of each block relative to the block above it (default %(default)s)",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=_default("schedule"),
        help="lr schedule of the fine-tune phase; warmup-cosine: 10%% linear warm-up from "
        "lr/10, then cosine to 0 (default %(default)s)",
    )
    p.add_argument(
        "--unfreeze-blocks",
        type=int,
        default=_default("unfreeze_blocks"),
        help="VGG blocks to unfreeze in fine-tuning, 1-5 (default %(default)s)",
    )
    p.add_argument(
        "--epochs-head",
        type=int,
        default=_default("epochs_head"),
        help="epochs with the backbone frozen (default %(default)s)",
    )
    p.add_argument(
        "--epochs-finetune",
        type=int,
        default=_default("epochs_finetune"),
        help="epochs after the head phase, with blocks unfrozen (default %(default)s)",
    )
    p.add_argument(
        "--lr-head",
        type=float,
        default=_default("lr_head"),
        help="Adam learning rate, head phase (default %(default)s)",
    )
    p.add_argument(
        "--lr-finetune",
        type=float,
        default=_default("lr_finetune"),
        help="Adam learning rate, fine-tune phase (default %(default)s)",
    )
    p.add_argument(
        "--lr-scratch",
        type=float,
        default=_default("lr_scratch"),
        help="Adam learning rate with --weights none (default %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=_default("batch_size"),
        help="global batch size (default %(default)s)",
    )
    p.add_argument(
        "--dense-units",
        type=int,
        default=_default("dense_units"),
        help="units of the head's hidden layer (default %(default)s)",
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=_default("dropout"),
        help="head dropout (default %(default)s)",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="random flip/rotation/zoom/contrast while training (not in the saved model)",
    )
    p.add_argument(
        "--class-weights",
        choices=["auto", "none"],
        default=_default("class_weights"),
        help="auto: balance unbalanced classes (default)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=_default("patience"),
        help="early stopping patience on val loss (default %(default)s)",
    )
    p.add_argument(
        "--baseline",
        choices=["none", "scratch"],
        default=_default("baseline"),
        help="scratch: also train the same model from scratch with the same epochs (into "
        "RUN_DIR/baseline-scratch) and report the transfer gain (default %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=_default("seed"),
        help="seed for split, init, shuffling (default %(default)s)",
    )
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="train without unreadable images instead of stopping (counted in the report)",
    )
    p.add_argument(
        "--data-pipeline",
        choices=["auto", "memory", "stream"],
        default=_default("data_pipeline"),
        help="memory: decode once, keep in RAM; stream: decode the files every epoch in "
        "parallel (data larger than memory); auto: stream only if memory would not hold it",
    )
    p.add_argument(
        "--data-cache",
        metavar="DIR",
        default=_default("data_cache"),
        help="streamed images: decode them once into a memory-mapped file in DIR (named "
        "from the files' contents and the image size, reused by later runs) instead of "
        "every epoch; needs N x size x size x 3 bytes of disk",
    )
    p.add_argument(
        "--mixed-precision",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto: on with a GPU",
    )
    p.add_argument(
        "--jit-compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="XLA; auto: on with a GPU (slower on CPU)",
    )
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out from its last checkpoint",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data_dir=args.data_dir,
        val_dir=args.val_dir,
        val_split=args.val_split,
        image_size=args.image_size,
        weights=args.weights,
        strategy=args.strategy,
        unfreeze_blocks=args.unfreeze_blocks,
        block_lr_ratio=args.block_lr_ratio,
        schedule=args.schedule,
        epochs_head=args.epochs_head,
        epochs_finetune=args.epochs_finetune,
        lr_head=args.lr_head,
        lr_finetune=args.lr_finetune,
        lr_scratch=args.lr_scratch,
        batch_size=args.batch_size,
        dense_units=args.dense_units,
        dropout=args.dropout,
        augment=args.augment,
        class_weights=args.class_weights,
        patience=args.patience,
        baseline=args.baseline,
        seed=args.seed,
        skip_bad_images=args.skip_bad_images,
        data_pipeline=args.data_pipeline,
        data_cache=args.data_cache,
        mixed_precision=args.mixed_precision,
        jit_compile=args.jit_compile,
        tensorboard=not args.no_tensorboard,
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from tl2edge.train.fit import train

    out = train(cfg, args.out, overwrite=args.overwrite, resume=args.resume)
    from tl2edge.train.cluster import role

    r = role()
    if r is not None and not r.is_chief:
        import shutil

        shutil.rmtree(out, ignore_errors=True)  # a worker's temporary copy
        print(f"{r.task_type} {r.index} done; the chief's run dir is the result")
        return 0
    print(f"Next: tl2edge export {out} --repository models --name my-model")
    return 0
