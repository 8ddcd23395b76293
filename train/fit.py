"""`train(config, out)`: the two-phase transfer-learning recipe, resumable, with a full run dir.

Phases (each is one `fit` with its own optimizer) come from `recipes.plan_phases`: `head`
(backbone frozen), then `finetune` per --strategy; `--weights none` has one `scratch` phase.

State lives in RUN_DIR/state.json; Keras' BackupAndRestore saves every epoch, so Ctrl-C or
SIGTERM leaves a run that `--resume` continues from its last finished epoch.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import platform
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tl2edge import __version__, rundir
from tl2edge.errors import UserError
from tl2edge.manifest import INPUT_NAME, OUTPUT_NAME, PREPROCESSING
from tl2edge.rundir import RunDir
from tl2edge.train.config import TrainConfig
from tl2edge.train.recipes import make_optimizer, plan_phases

log = logging.getLogger("tl2edge.train")


def _prepare_out(cfg: TrainConfig, out: Path, *, overwrite: bool, resume: bool) -> TrainConfig:
    """Check the run dir before any heavy work; on --resume, the config the run started with."""
    if not resume:
        RunDir.check_new(out, overwrite=overwrite)
        return cfg
    saved = RunDir.resume(out).train_config()
    if saved != cfg:
        log.warning(
            "--resume uses the configuration saved in %s; other flags given are ignored",
            out / rundir.CONFIG,
        )
    return saved


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
    t0 = time.perf_counter()
    data = _load_data(cfg)
    run, state = prepare(cfg, out, data, overwrite=overwrite, resume=resume)
    timings = dict(state.get("timings", {}), data_s=round(time.perf_counter() - t0, 2))
    done: list[str] = list(state.get("phases_done", []))
    session = build(cfg, data)
    fit_phases(cfg, run, session, done=done, timings=timings, resume=resume)
    finalize(cfg, run, session, data, done=done, timings=timings)
    return run.path


def _load_data(cfg: TrainConfig):
    from tl2edge.train.cache import cache_data, checked_digests
    from tl2edge.train.data import load_data

    data = load_data(
        cfg.data_dir,
        image_size=cfg.image_size,
        val_dir=cfg.val_dir,
        val_split=cfg.val_split,
        seed=cfg.seed,
        skip_bad_images=cfg.skip_bad_images,
        pipeline=cfg.data_pipeline,
        checked=checked_digests(cfg.data_cache) if cfg.data_cache else frozenset(),
    )
    if cfg.data_cache and data.train.x is None:
        data = cache_data(data, cfg.data_cache)
    elif cfg.data_cache:
        log.info("--data-cache is not needed: the decoded images fit in memory")
    log.info("data: %s", data.summary())
    return data


def prepare(
    cfg: TrainConfig, out: Path, data, *, overwrite: bool, resume: bool
) -> tuple[RunDir, dict]:
    """Create (or re-open) the run dir and record config, labels and the exact split."""
    if not resume:
        run = RunDir.create(out, overwrite=overwrite)
        state: dict = {}
    else:
        run = RunDir.resume(out)
        _check_same_data(run, data)
        state = run.state()
    run.write_config(cfg)
    run.write_labels(data.classes)
    run.write_split(data.saved_split())
    run.write_state(rundir.RUNNING, phases_done=state.get("phases_done", []))
    return run, state


def _check_same_data(run: RunDir, data) -> None:
    """--resume continues only on the data the run started with."""
    saved = run.split()
    classes = saved.classes if saved else run.labels()
    if tuple(data.classes) != tuple(classes):
        raise UserError(
            f"--resume: the data dir now has classes {list(data.classes)}, but the run in "
            f"{run.path} started with {list(classes)}; restore the folder, or start a new run "
            "with --overwrite"
        )
    if saved is not None and saved.fingerprint != data.fingerprint:
        raise UserError(
            f"--resume: the data dir changed since the run in {run.path} started (data "
            f"fingerprint {data.fingerprint[:12]} now, {saved.fingerprint[:12]} then): files were "
            "added, removed or edited; restore the folder, or start a new run with --overwrite"
        )


@dataclass
class Session:
    """What the phases train: the inference model, the training wrapper, data and devices."""

    model: object
    trainer: object
    strategy: object
    device: dict
    train_ds: object
    val_ds: object
    class_weights: dict[int, float] | None
    weights_desc: str
    train_size: int  # training images (steps per epoch for the schedules)


def build(cfg: TrainConfig, data) -> Session:
    """Devices, datasets, class weights and the model with its backbone weights."""
    import keras

    from tl2edge.train import model as vgg
    from tl2edge.train.data import class_weights, make_dataset
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
    return Session(
        model,
        trainer,
        strategy,
        device,
        train_ds,
        val_ds,
        weights_cw,
        weights_desc,
        len(data.train),
    )


def fit_phases(
    cfg: TrainConfig,
    run: RunDir,
    session: Session,
    *,
    done: list[str],
    timings: dict[str, float],
    resume: bool,
) -> None:
    """Run each planned phase (skipping those a resumed run finished); Ctrl-C/SIGTERM leave
    state "interrupted" and a checkpoint that --resume continues from."""
    import keras

    from tl2edge.train import model as vgg

    ckpt = run.file(rundir.CHECKPOINTS)
    ckpt.mkdir(exist_ok=True)
    verbose = 1 if sys.stdout.isatty() else 2
    trainer, strategy = session.trainer, session.strategy
    try:
        with _sigterm_as_interrupt():
            for phase in plan_phases(cfg):
                phase_weights = ckpt / f"{phase.name}.weights.h5"
                if phase.name in done and phase_weights.is_file():
                    trainer.load_weights(phase_weights)
                    log.info("phase %s: already done, weights restored", phase.name)
                    continue
                log.info("phase %s: %s", phase.name, phase.describe())
                with strategy.scope():
                    vgg.set_trainable(session.model, phase.backbone)
                    trainer.compile(
                        optimizer=make_optimizer(
                            phase, steps_per_epoch=-(-session.train_size // cfg.batch_size)
                        ),
                        loss="sparse_categorical_crossentropy",
                        metrics=["accuracy"],
                        jit_compile=session.device["jit_compile"],
                    )
                    if "workers" in session.device:
                        from tl2edge.train.cluster import adapt_for_multi_worker

                        adapt_for_multi_worker(trainer, cfg.image_size)
                # The log row is written before the backup marks the epoch done: an
                # interruption in between repeats the epoch, and the history keeps the last row.
                callbacks = [
                    keras.callbacks.CSVLogger(
                        str(run.file(f"history-{phase.name}.csv")), append=resume
                    ),
                    keras.callbacks.BackupAndRestore(str(ckpt / f"{phase.name}-backup")),
                    keras.callbacks.EarlyStopping(
                        monitor="val_loss", patience=cfg.patience, restore_best_weights=True
                    ),
                ]
                if cfg.tensorboard:
                    callbacks.append(
                        keras.callbacks.TensorBoard(
                            str(run.file(rundir.TENSORBOARD) / phase.name), profile_batch=0
                        )
                    )
                t = time.perf_counter()
                trainer.fit(
                    session.train_ds,
                    validation_data=session.val_ds,
                    epochs=phase.epochs,
                    class_weight=session.class_weights,
                    callbacks=callbacks,
                    verbose=verbose,
                    shuffle=False,  # the dataset shuffles itself
                )
                timings[f"{phase.name}_s"] = round(
                    timings.get(f"{phase.name}_s", 0) + time.perf_counter() - t, 2
                )
                trainer.save_weights(phase_weights)
                done.append(phase.name)
                run.write_state(rundir.RUNNING, phases_done=done, timings=timings)
    except KeyboardInterrupt:
        run.write_state(rundir.INTERRUPTED, phases_done=done, timings=timings)
        log.warning(
            "interrupted: the run in %s can be continued with: tl2edge train %s --out %s --resume",
            run.path,
            cfg.data_dir,
            run.path,
        )
        raise


def finalize(
    cfg: TrainConfig, run: RunDir, session: Session, data, *, done: list[str], timings: dict
) -> None:
    """Save the float32 inference model, the run record and the reports; mark the run complete."""
    import keras
    import tensorflow as tf

    from tl2edge.train import model as vgg
    from tl2edge.train.report import write_reports

    keras.mixed_precision.set_global_policy("float32")
    inference = vgg.build_model(
        len(data.classes),
        image_size=cfg.image_size,
        dense_units=cfg.dense_units,
        dropout=cfg.dropout,
    )
    inference.set_weights(session.model.get_weights())
    tmp = run.file(rundir.MODEL + ".tmp.keras")
    inference.save(tmp)
    tmp.replace(run.model_path)

    history = _merge_history(run, [p.name for p in plan_phases(cfg)])
    weights_cw = session.class_weights
    run_record = {
        "tl2edge": __version__,
        "config": cfg.to_json(),
        "seed": cfg.seed,
        "weights": session.weights_desc,
        "classes": list(data.classes),
        "counts": {"train": len(data.train), "val": len(data.val)},
        "data_fingerprint": data.fingerprint,
        "class_weights": (
            {data.classes[k]: round(v, 4) for k, v in weights_cw.items()} if weights_cw else None
        ),
        "bad_images": [{"path": p, "reason": r} for p, r in data.bad_images],
        "device": session.device,
        "timings": timings,
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "platform": platform.platform(),
        },
        "input": {
            "name": INPUT_NAME,
            "shape": [None, cfg.image_size, cfg.image_size, 3],
            "range": [0, 255],
            "layout": "NHWC",
            "color": "RGB",
            "preprocessing": f"{PREPROCESSING} (inside the model)",
        },
        "output": {"name": OUTPUT_NAME, "shape": [None, len(data.classes)]},
    }
    write_reports(run, inference, data, history, run_record, batch_size=cfg.batch_size)
    shutil.rmtree(run.file(rundir.CHECKPOINTS), ignore_errors=True)
    run.write_state(rundir.COMPLETE, phases_done=done, timings=timings)
    log.info(
        "run dir ready: %s (%s, %s, %s, %s)",
        run.path,
        rundir.MODEL,
        rundir.REPORT,
        rundir.CURVES,
        rundir.CONFUSION,
    )
    if cfg.baseline == "scratch":
        from tl2edge.train.baseline import run_baseline

        run_baseline(cfg, run.path)


def _merge_history(run: RunDir, phases: list[str]) -> list[dict]:
    """Rows of every phase's CSV log (the last row per epoch), numbered across phases."""
    rows: list[dict] = []
    for name in phases:
        path = run.file(f"history-{name}.csv")
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
    rundir.write_json(run.file(rundir.HISTORY), rows)
    return rows
