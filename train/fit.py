"""`train(config, out)`: the two-phase transfer-learning recipe, resumable, with a full run dir.

Phases (each is one `fit` with its own optimizer) come from `recipes.plan_phases`: `head`
(backbone frozen), then `finetune` per --strategy; `--weights none` has one `scratch` phase.

State lives in RUN_DIR/state.json; Keras' BackupAndRestore saves every epoch, so Ctrl-C or
SIGTERM leaves a run that `--resume` continues from its last finished epoch.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import platform
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tl2edge import __version__
from tl2edge.errors import UserError
from tl2edge.train.config import TrainConfig
from tl2edge.train.recipes import make_optimizer, plan_phases

log = logging.getLogger("tl2edge.train")

CHECKPOINTS = "checkpoints"


def _read_state(out: Path) -> dict:
    path = out / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_state(out: Path, **state) -> None:
    tmp = out / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(out / "state.json")


def _prepare_out(cfg: TrainConfig, out: Path, *, overwrite: bool, resume: bool) -> TrainConfig:
    if resume:
        state = _read_state(out)
        if not state or not (out / "config.json").is_file():
            raise UserError(
                f"--resume: {out} holds no resumable run (no state.json/config.json); start it without --resume"
            )
        if state.get("status") == "complete":
            raise UserError(f"--resume: the run in {out} is already complete; nothing to resume")
        if not (out / CHECKPOINTS).is_dir():
            raise UserError(
                f"--resume: {out} has no checkpoint to resume from; start the run again with --overwrite"
            )
        saved = TrainConfig.load(out / "config.json")
        if saved != cfg:
            log.warning(
                "--resume uses the configuration saved in %s/config.json; other flags given are ignored",
                out,
            )
        return saved
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(
            f"run dir {out} exists; pass --overwrite to replace it, --resume to continue it, or choose another --out"
        )
    return cfg


@dataclass(frozen=True)
class DevicePlan:
    strategy: str  # default | mirrored | multi-worker
    mixed_precision: bool
    jit_compile: bool


def plan_devices(cfg: TrainConfig, *, gpus: int, tf_config: bool) -> DevicePlan:
    """What to run on: a pure function of the config and the machine, so it is testable anywhere."""
    if tf_config:
        strategy = "multi-worker"
    elif gpus > 1:
        strategy = "mirrored"
    else:
        strategy = "default"
    mixed = cfg.mixed_precision == "on" or (cfg.mixed_precision == "auto" and gpus > 0)
    jit = cfg.jit_compile == "on" or (cfg.jit_compile == "auto" and gpus > 0)
    return DevicePlan(strategy, mixed, jit)


def _device_setup(cfg: TrainConfig):
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    plan = plan_devices(cfg, gpus=len(gpus), tf_config="TF_CONFIG" in os.environ)
    strategy = {
        "multi-worker": tf.distribute.MultiWorkerMirroredStrategy,
        "mirrored": tf.distribute.MirroredStrategy,
        "default": tf.distribute.get_strategy,
    }[plan.strategy]()
    keras.mixed_precision.set_global_policy("mixed_float16" if plan.mixed_precision else "float32")
    device = {
        "gpus": [g.name for g in gpus],
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "mixed_precision": plan.mixed_precision,
        "jit_compile": plan.jit_compile,
    }
    if plan.strategy == "multi-worker":
        from tl2edge.train.cluster import role

        device["workers"] = role().describe()
    log.info("device: %s", ", ".join(f"{k}={v}" for k, v in device.items()))
    if not gpus:
        log.info("no GPU found: training on the CPU%s", "" if plan.jit_compile else " without XLA")
    return strategy, device


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM behaves like Ctrl-C, so a stopped job leaves a resumable run."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(
    cfg: TrainConfig, out: str | Path, *, overwrite: bool = False, resume: bool = False
) -> Path:
    """Train per `cfg` into run dir `out` and return it. Raises UserError on bad input."""
    from tl2edge.train.cluster import run_dir_for

    out = run_dir_for(Path(out))  # multi-worker: only the chief writes --out
    cfg = _prepare_out(cfg, out, overwrite=overwrite, resume=resume)

    from tl2edge.train.data import class_weights, load_data

    t0 = time.perf_counter()
    data = load_data(
        cfg.data_dir,
        image_size=cfg.image_size,
        val_dir=cfg.val_dir,
        val_split=cfg.val_split,
        seed=cfg.seed,
        skip_bad_images=cfg.skip_bad_images,
        pipeline=cfg.data_pipeline,
    )
    log.info("data: %s", data.summary())
    t_data = time.perf_counter() - t0
    if overwrite and not resume and out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
    (out / "labels.json").write_text(json.dumps(list(data.classes), indent=2))
    state = _read_state(out) if resume else {}
    done: list[str] = state.get("phases_done", [])
    _write_state(out, status="running", phases_done=done)

    import keras
    import tensorflow as tf

    from tl2edge.train import model as vgg
    from tl2edge.train.data import make_dataset
    from tl2edge.train.weights import load_backbone_weights

    keras.utils.set_random_seed(cfg.seed)
    strategy, device = _device_setup(cfg)
    train_ds = make_dataset(data.train, batch_size=cfg.batch_size, training=True, seed=cfg.seed)
    val_ds = make_dataset(data.val, batch_size=cfg.batch_size, training=False, seed=cfg.seed)
    weights_cw = (
        class_weights(data.train.y, len(data.classes)) if cfg.class_weights == "auto" else None
    )
    if weights_cw:
        log.info(
            "unbalanced classes: using class weights %s",
            {data.classes[k]: round(v, 2) for k, v in weights_cw.items()},
        )

    with strategy.scope():
        model = vgg.build_model(
            len(data.classes),
            image_size=cfg.image_size,
            dense_units=cfg.dense_units,
            dropout=cfg.dropout,
        )
        weights_desc = load_backbone_weights(model, cfg.weights)
        if cfg.from_scratch:
            vgg.he_reinit(model, cfg.seed)
        trainer = vgg.training_model(model, augment=cfg.augment, seed=cfg.seed)
    log.info("model: %s; backbone weights: %s", cfg, weights_desc)

    timings: dict[str, float] = dict(state.get("timings", {}), data_s=round(t_data, 2))
    ckpt = out / CHECKPOINTS
    ckpt.mkdir(exist_ok=True)
    verbose = 1 if sys.stdout.isatty() else 2
    initial_epoch = 0
    try:
        with _sigterm_as_interrupt():
            for phase in plan_phases(cfg):
                phase_weights = ckpt / f"{phase.name}.weights.h5"
                if phase.name in done and phase_weights.is_file():
                    trainer.load_weights(phase_weights)
                    initial_epoch += phase.epochs
                    log.info("phase %s: already done, weights restored", phase.name)
                    continue
                log.info("phase %s: %s", phase.name, phase.describe())
                with strategy.scope():
                    vgg.set_trainable(model, phase.backbone)
                    trainer.compile(
                        optimizer=make_optimizer(
                            phase, steps_per_epoch=-(-len(data.train) // cfg.batch_size)
                        ),
                        loss="sparse_categorical_crossentropy",
                        metrics=["accuracy"],
                        jit_compile=device["jit_compile"],
                    )
                    if "workers" in device:
                        from tl2edge.train.cluster import adapt_for_multi_worker

                        adapt_for_multi_worker(trainer, cfg.image_size)
                # The log row is written before the backup marks the epoch done: an
                # interruption in between repeats the epoch, and the history keeps the last row.
                callbacks = [
                    keras.callbacks.CSVLogger(
                        str(out / f"history-{phase.name}.csv"), append=resume
                    ),
                    keras.callbacks.BackupAndRestore(str(ckpt / f"{phase.name}-backup")),
                    keras.callbacks.EarlyStopping(
                        monitor="val_loss", patience=cfg.patience, restore_best_weights=True
                    ),
                ]
                if cfg.tensorboard:
                    callbacks.append(
                        keras.callbacks.TensorBoard(
                            str(out / "tensorboard" / phase.name), profile_batch=0
                        )
                    )
                t = time.perf_counter()
                trainer.fit(
                    train_ds,
                    validation_data=val_ds,
                    epochs=phase.epochs,
                    class_weight=weights_cw,
                    callbacks=callbacks,
                    verbose=verbose,
                    shuffle=False,  # the dataset shuffles itself
                )
                timings[f"{phase.name}_s"] = round(
                    timings.get(f"{phase.name}_s", 0) + time.perf_counter() - t, 2
                )
                trainer.save_weights(phase_weights)
                done.append(phase.name)
                _write_state(out, status="running", phases_done=done, timings=timings)
                initial_epoch += phase.epochs
    except KeyboardInterrupt:
        _write_state(out, status="interrupted", phases_done=done, timings=timings)
        log.warning(
            "interrupted: the run in %s can be continued with: tl2edge train %s --out %s --resume",
            out,
            cfg.data_dir,
            out,
        )
        raise

    from tl2edge.train.report import write_reports

    keras.mixed_precision.set_global_policy("float32")
    inference = vgg.build_model(
        len(data.classes),
        image_size=cfg.image_size,
        dense_units=cfg.dense_units,
        dropout=cfg.dropout,
    )
    inference.set_weights(model.get_weights())
    tmp = out / "model.keras.tmp.keras"
    inference.save(tmp)
    tmp.replace(out / "model.keras")

    history = _merge_history(out, [p.name for p in plan_phases(cfg)])
    run_record = {
        "tl2edge": __version__,
        "config": cfg.to_json(),
        "seed": cfg.seed,
        "weights": weights_desc,
        "classes": list(data.classes),
        "counts": {"train": len(data.train), "val": len(data.val)},
        "data_fingerprint": data.fingerprint,
        "class_weights": (
            {data.classes[k]: round(v, 4) for k, v in weights_cw.items()} if weights_cw else None
        ),
        "bad_images": [{"path": p, "reason": r} for p, r in data.bad_images],
        "device": device,
        "timings": timings,
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "platform": platform.platform(),
        },
        "input": {
            "name": "image",
            "shape": [None, cfg.image_size, cfg.image_size, 3],
            "range": [0, 255],
            "layout": "NHWC",
            "color": "RGB",
            "preprocessing": "vgg16-caffe (inside the model)",
        },
        "output": {"name": "probs", "shape": [None, len(data.classes)]},
    }
    write_reports(out, inference, data, history, run_record, batch_size=cfg.batch_size)
    shutil.rmtree(ckpt, ignore_errors=True)
    _write_state(out, status="complete", phases_done=done, timings=timings)
    if cfg.baseline == "scratch":
        from tl2edge.train.baseline import run_baseline

        run_baseline(cfg, out)
    log.info("run dir ready: %s (model.keras, report.md, curves.png, confusion.png)", out)
    return out


def _merge_history(out: Path, phases: list[str]) -> list[dict]:
    """Rows of every phase's CSV log (the last row per epoch), numbered across phases."""
    rows: list[dict] = []
    for name in phases:
        path = out / f"history-{name}.csv"
        if not path.is_file():
            continue
        by_epoch: dict[int, dict] = {}
        with path.open() as f:
            for row in csv.DictReader(f):
                values = {
                    k: float(v) for k, v in row.items() if k != "epoch" and v not in ("", None)
                }
                by_epoch[int(row["epoch"])] = values
        for epoch in sorted(by_epoch):
            rows.append({"epoch": len(rows) + 1, "phase": name, **by_epoch[epoch]})
    (out / "history.json").write_text(json.dumps(rows, indent=2))
    return rows
