"""`tl2edge demo`: the whole pipeline on the built-in synthetic data, on a CPU, in minutes.

1. Writes the target task (5 shape classes, few images per class) and a held-out test set.
2. Fine-tunes VGG16 from the shipped backbone (pretrained by tl2edge on the synthetic
   source and procedural tasks, `make source-backbone`): head first, then the top block
   unfrozen.
3. Trains the same model from scratch with the same epochs, for comparison
   (`--baseline scratch`: the run's report states the transfer gain).
4. Exports the fine-tuned model to ONNX (fp32 + int8) and prints the variant table.
5. Serves the int8 model over gRPC, classifies held-out images through both APIs, prints
   predictions against the truth and the request latency, and shuts the server down.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from tl2edge.errors import UserError
from tl2edge.rundir import RunDir

log = logging.getLogger("tl2edge.demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="demo-out", help="folder for everything the demo writes (replaced)"
    )
    parser.add_argument(
        "--backbone",
        help="pretrained backbone (.npz); default: the shipped one (package data)",
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
    probs = load_inference_model(RunDir.open(run_dir).model_path).predict(x, verbose=0)
    return float((probs.argmax(1) == y).mean()), x, y


def run(args: argparse.Namespace) -> int:
    if args.backbone:
        return _run(args, Path(args.backbone))
    from tl2edge.resources import SOURCE_BACKBONE, asset_path

    with asset_path(SOURCE_BACKBONE) as backbone:
        return _run(args, backbone)


def _run(args: argparse.Namespace, backbone: Path) -> int:
    t_start = time.perf_counter()
    out = Path(args.out)
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
    transfer = train(
        TrainConfig(
            **common,
            weights=str(backbone),
            strategy="fine-tune",
            unfreeze_blocks=1,
            lr_head=1e-3,
            lr_finetune=1e-4,
            baseline="scratch",
        ),
        out / "runs" / "transfer",
    )
    # --baseline scratch trained the same model from scratch with the same epochs beside it.
    baseline = RunDir.open(transfer).record()["baseline"]
    scratch = transfer / baseline["run_dir"]
    t_transfer, t_scratch = baseline["transfer_train_s"], baseline["train_s"]

    acc_transfer, _, y_test = _held_out_accuracy(transfer, test, size)
    acc_scratch, _, _ = _held_out_accuracy(scratch, test, size)
    val = {"transfer": baseline["transfer_val_accuracy"], "scratch": baseline["val_accuracy"]}
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

    from tl2edge.export.api import export

    repo = out / "models"
    exported = export(transfer, repository=repo, name="shapes", variants=("fp32", "int8"))
    print(
        f"Export of the fine-tuned model to {repo} ({exported.seconds:.0f} s; accuracy on the run's validation images)"
    )
    print(exported.table())
    from tl2edge.export.evaluate import evaluate

    int8 = evaluate(exported.row("int8").path, test, out=out / "evaluation-int8")
    print(
        f"int8 on the held-out test set: {int8.accuracy:.1%} (Keras: {acc_transfer:.1%}); "
        f"confusion matrix in {out / 'evaluation-int8'}"
    )
    print()
    if not args.skip_serve:
        _serve_and_classify(repo, exported.name, test)  # the plain name: the best variant
    log.info("demo finished in %.0f s", time.perf_counter() - t_start)
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_classify(repo: Path, model: str, test_dir: Path, per_class: int = 2) -> None:
    """Start `tl2edge serve` as its own process, classify through both APIs, stop it with SIGTERM."""
    import signal
    import subprocess
    import sys

    from tl2edge.client import Client
    from tl2edge.images import decode_rgb, scan_image_folder

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "tl2edge",
        "serve",
        "--repository",
        str(repo),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        "-1",
        "--device",
        "cpu",
        "--log-level",
        "WARNING",
    ]
    print(f"$ {' '.join(cmd[2:])}")
    t = time.perf_counter()
    server = subprocess.Popen(cmd)
    try:
        with Client(f"127.0.0.1:{port}", timeout=30) as client:
            client.wait_until_serving(timeout=60)
            print(
                f"server SERVING after {time.perf_counter() - t:.1f} s (start-up and warm-up included); "
                f"{model!r} resolves to {_model_info(client, model).resolves_to or model}"
            )
            folder = scan_image_folder(test_dir)
            picks = [
                (p, y)
                for c in range(len(folder.classes))
                for p, y in [f for f in folder.files if f[1] == c][:per_class]
            ]
            latencies = []
            print(
                f"{'image':<28} {'truth':<10} {'Classify (top-1, score)':<26} {'KServe v2 ModelInfer':<20}"
            )
            correct = 0
            for path, label in picks:
                t = time.perf_counter()
                top = client.classify([path.read_bytes()], model=model, top_k=1)[0][0]
                latencies.append(time.perf_counter() - t)
                probs = client.infer(model, decode_rgb(path, _model_size(client, model)))[0]
                kserve = folder.classes[int(np.argmax(probs))]
                correct += top.label == folder.classes[label]
                print(
                    f"{path.name:<28} {folder.classes[label]:<10} {top.label + f' ({top.score:.2f})':<26} {kserve:<20}"
                )
            lat = np.array(latencies) * 1000
            print(
                f"{correct}/{len(picks)} correct; Classify request latency (encoded PNG in, top-1 out): "
                f"median {np.median(lat):.1f} ms, max {lat.max():.1f} ms over {len(lat)} requests"
            )
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    print(f"server stopped with exit code {code} after SIGTERM (drained)")


def _model_info(client, model: str):  # type: ignore[no-untyped-def]
    return next(m for m in client.models() if m.name == model)


def _model_size(client, model: str) -> tuple[int, int]:
    return _model_info(client, model).image_size
