"""`prune(run_dir, out=..., target_speedup=...)`: a finished run becomes a smaller run.

Schedule: `steps` rounds; round k drops the least important filters (importance divided by
the FLOPs each saves to the power `cost_weight`) until the FLOPs count is parent /
S^(k/steps), then fine-tunes every layer for `epochs` epochs (by default enough for
MIN_UPDATES optimizer updates) on the run's training images and measures validation accuracy
on the run's validation images (the split training used).
With `max_accuracy_drop`, a round that loses more than that many points against the
parent stops the schedule and the last round within budget is kept. The result is written
to a staging folder and moved to `out` at the end: a complete run dir or nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tl2edge import rundir
from tl2edge.errors import UserError
from tl2edge.train.prune import METHODS, NORMS

log = logging.getLogger("tl2edge.train")

CONFIG_FILE = "prune_config.json"
LINEAGE_FILE = "prune.json"

# With `epochs` unset, each step's fine-tuning runs at least this many optimizer updates. On
# the far task (240 training images, 8 batches per epoch) 2 epochs per step (16 updates) left
# the pruned model 1.0 point under its parent on 400 test images, 6 epochs (48 updates) 0.75
# over it (both measured before a step kept its epoch of lowest validation loss); the demo's
# 800 images reach 50 updates in the 2 epochs that served them well.
MIN_UPDATES = 48
MAX_AUTO_EPOCHS = 10


def fine_tune_epochs(epochs: int | None, *, train_images: int, batch_size: int) -> int:
    """Epochs of fine-tuning per step: `epochs` when given, else the fewest epochs from 2 to
    MAX_AUTO_EPOCHS that make MIN_UPDATES optimizer updates."""
    if epochs is not None:
        return epochs
    per_epoch = max(1, math.ceil(train_images / batch_size))
    return min(MAX_AUTO_EPOCHS, max(2, math.ceil(MIN_UPDATES / per_epoch)))


@dataclass(frozen=True)
class PruneConfig:
    """Everything that decides what `tl2edge prune` produces."""

    run_dir: str
    out: str
    target_speedup: float
    method: str = "taylor"  # norm | taylor
    norm: str = "l1"  # with method norm: l1 | l2
    steps: int = 3
    # Fine-tuning epochs after each step; None: enough epochs for MIN_UPDATES optimizer updates
    # (at least 2, at most MAX_AUTO_EPOCHS), so small datasets are not under-trained.
    epochs: int | None = None
    lr: float = 1e-4
    batch_size: int | None = None  # None: the parent run's
    max_accuracy_drop: float | None = None  # points (1.0 = one percentage point)
    taylor_images: int = 512
    min_keep: float = 0.1  # fraction of each layer's filters that always stays
    # beta: filters ranked by importance / FLOPs saved**beta. 0 (importance alone) is the
    # default: beta 0.5 reached the same accuracy but no clearly faster int8 at 32 px on a
    # 2-core EPYC, where speed followed channel counts more than FLOPs (docs/benchmarks.md).
    cost_weight: float = 0.0
    # Filters leave layers in groups of this many, so layer widths stay multiples of it (as
    # NVIDIA TAO's prune granularity). int8 convolutions on a 2-core EPYC ran 1.1-1.4x faster
    # at batch 8 on widths rounded to 16 than on the same selections unrounded.
    channel_multiple: int = 16
    measure: bool = True  # ONNX fp32/int8 sizes, latency and throughput in the report
    device: str = "cpu"
    bench_seconds: float = 2.0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.target_speedup > 1.0:
            raise UserError(
                f"--target-speedup must be greater than 1 (FLOPs of the parent / FLOPs of the "
                f"result), got {self.target_speedup}"
            )
        if self.method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.norm not in NORMS:
            raise UserError(f"--norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.steps < 1:
            raise UserError(f"--steps must be at least 1, got {self.steps}")
        if self.epochs is not None and self.epochs < 0:
            raise UserError(f"--epochs cannot be negative, got {self.epochs}")
        if not 0 < self.lr < 1:
            raise UserError(f"--lr must be between 0 and 1, got {self.lr}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop <= 100:
            raise UserError(
                f"--max-accuracy-drop is in percentage points, 0..100; got {self.max_accuracy_drop}"
            )
        if self.taylor_images < 1:
            raise UserError(f"--taylor-images must be at least 1, got {self.taylor_images}")
        if not 0 < self.min_keep <= 1:
            raise UserError(f"--min-keep must be in (0, 1], got {self.min_keep}")
        if not 1 <= self.channel_multiple <= 256:
            raise UserError(
                f"--channel-multiple must be from 1 (any width) to 256, got {self.channel_multiple}"
            )
        if not 0 <= self.cost_weight <= 2:
            raise UserError(
                f"--cost-weight must be in [0, 2] (0: importance only, 1: importance per FLOP), "
                f"got {self.cost_weight}"
            )
        from tl2edge.serve.providers import DEVICES

        if self.device not in DEVICES:
            raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.bench_seconds <= 0:
            raise UserError(f"--bench-seconds must be positive, got {self.bench_seconds}")
        if Path(self.out).resolve() == Path(self.run_dir).resolve():
            raise UserError("--out must be a new folder, not the parent run dir itself")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        method = f"norm ({self.norm})" if self.method == "norm" else "taylor"
        budget = (
            f", max drop {self.max_accuracy_drop} points"
            if self.max_accuracy_drop is not None
            else ""
        )
        cost = f" / FLOPs saved^{self.cost_weight:g}" if self.cost_weight else ""
        cost += (
            f", widths in multiples of {self.channel_multiple}" if self.channel_multiple > 1 else ""
        )
        return (
            f"target {self.target_speedup}x FLOPs, {method} importance{cost}, "
            f"{self.steps} step(s) x "
            f"{'auto' if self.epochs is None else self.epochs} epoch(s) at lr {self.lr}{budget}"
        )


@dataclass(frozen=True)
class Round:
    step: int
    flops: int
    filters: dict[str, int]
    accuracy_pruned: float  # right after the surgery
    accuracy: float  # after fine-tuning
    epochs: int  # of fine-tuning
    kept_epoch: int  # the one with the lowest validation loss, whose weights are kept; 0: none
    seconds: float


@dataclass(frozen=True)
class PruneResult:
    run_dir: Path
    parent: Path
    parent_flops: int
    flops: int
    parent_accuracy: float
    accuracy: float
    rounds: tuple[Round, ...]  # the rounds kept
    stopped: str | None  # why the schedule stopped early, or None
    seconds: float
    measured: dict[str, Any] | None  # ONNX sizes / latency / throughput, parent and pruned

    @property
    def speedup(self) -> float:
        return self.parent_flops / self.flops

    @property
    def next_command(self) -> str:
        return f"tl2edge export {self.run_dir} --repository models --name my-model-pruned"


def read_parent(run_dir: str | Path, *, allow_changed_data: bool = False):
    """The parent run (checked complete), its training config, model and data: the exact
    train/validation split training saved (a run from before split.json replays it)."""
    from tl2edge.export.rundir import load_keras_model, load_run_data, open_run
    from tl2edge.train.config import TrainConfig

    run = open_run(run_dir)
    cfg = TrainConfig.from_json(run.config)
    if not Path(cfg.data_dir).is_dir():
        raise UserError(
            f"the run's data dir {cfg.data_dir} (from {run.dir.file(rundir.CONFIG)}) does not "
            "exist here; pruning fine-tunes on its training images: restore the folder at that path"
        )
    data = load_run_data(run, allow_changed_data=allow_changed_data)
    return run, cfg, load_keras_model(run), data


def _check_out(cfg: PruneConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    return out


def _accuracy(model, split, batch_size: int) -> float:
    probs = model.predict(split.x.astype(np.float32), batch_size=batch_size, verbose=0)
    return float((probs.argmax(axis=1) == split.y).mean())


def prune(
    run_dir: str | Path, *, out: str | Path, target_speedup: float, **options: Any
) -> PruneResult:
    """Prune run `run_dir` into the new run dir `out`; options are PruneConfig's fields."""
    return run_prune(
        PruneConfig(run_dir=str(run_dir), out=str(out), target_speedup=target_speedup, **options)
    )


def run_prune(cfg: PruneConfig) -> PruneResult:
    t0 = time.perf_counter()
    out = _check_out(cfg)
    run, train_cfg, parent, data = read_parent(cfg.run_dir)
    log.info("prune %s: %s; data: %s", run.path, cfg, data.summary())

    import keras

    from tl2edge.train import prune as surgery
    from tl2edge.train.data import class_weights, make_dataset
    from tl2edge.train.model import set_trainable, training_model

    keras.utils.set_random_seed(train_cfg.seed)
    batch = cfg.batch_size or train_cfg.batch_size
    epochs = fine_tune_epochs(cfg.epochs, train_images=len(data.train), batch_size=batch)
    if cfg.epochs is None:
        log.info(
            "fine-tuning %d epoch(s) per step (%d training images, batch %d: at least %d updates)",
            epochs,
            len(data.train),
            batch,
            MIN_UPDATES,
        )
    count = surgery.flops_counter(parent)
    parent_filters = surgery.filter_counts(parent)
    parent_flops = count(parent_filters)
    floor = surgery.floors(parent, parent_filters, cfg.min_keep)
    parent_acc = _accuracy(parent, data.val, batch)
    log.info(
        "parent: %.3g GFLOPs per image, validation accuracy %.2f%%",
        parent_flops / 1e9,
        parent_acc * 100,
    )
    train_ds = make_dataset(data.train, batch_size=batch, training=True, seed=train_cfg.seed)
    val_ds = make_dataset(data.val, batch_size=batch, training=False, seed=train_cfg.seed)
    weights_cw = (
        class_weights(data.train.y, len(data.classes))
        if train_cfg.class_weights == "auto"
        else None
    )
    rng = np.random.default_rng(train_cfg.seed)
    taylor_idx = np.sort(
        rng.choice(len(data.train), min(cfg.taylor_images, len(data.train)), replace=False)
    )
    verbose = 1 if sys.stdout.isatty() else 2

    model = parent
    origin = {k: np.arange(n) for k, n in parent_filters.items()}  # parent index per filter
    rounds: list[Round] = []
    history: list[dict] = []
    stopped = None
    for step in range(1, cfg.steps + 1):
        t_step = time.perf_counter()
        if cfg.method == "taylor":
            scores = surgery.taylor_scores(
                model, data.train.pixels(taylor_idx), data.train.y[taylor_idx], batch_size=batch
            )
        else:
            scores = surgery.norm_scores(model, norm=cfg.norm)
        target = parent_flops / cfg.target_speedup ** (step / cfg.steps)
        keep = surgery.choose_filters(
            scores,
            count,
            target_flops=target,
            floor=floor,
            cost_weight=cfg.cost_weight,
            channel_multiple=cfg.channel_multiple,
        )
        candidate = surgery.prune_model(model, keep)
        filters = {k: len(v) for k, v in keep.items()}
        flops = count(filters)
        acc_cut = _accuracy(candidate, data.val, batch)
        log.info(
            "step %d/%d: %s filters kept, %.2fx fewer FLOPs; accuracy %.2f%% before fine-tuning",
            step,
            cfg.steps,
            sum(filters.values()),
            parent_flops / flops,
            acc_cut * 100,
        )
        rows: list[dict] = []
        kept_epoch = 0
        if epochs:
            set_trainable(candidate, "all")
            trainer = training_model(candidate, augment=train_cfg.augment, seed=train_cfg.seed)
            trainer.compile(
                optimizer=keras.optimizers.Adam(cfg.lr),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            # Keep the epoch with the lowest validation loss, as `tl2edge train` does; the
            # patience is the whole budget, so every epoch runs.
            best = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=epochs, restore_best_weights=True
            )
            fit = trainer.fit(
                train_ds,
                validation_data=val_ds,
                epochs=epochs,
                class_weight=weights_cw,
                callbacks=[best],
                verbose=verbose,
                shuffle=False,
            )
            n = len(fit.history["loss"])
            rows = [
                {"phase": f"prune-{step}", **{k: float(v[e]) for k, v in fit.history.items()}}
                for e in range(n)
            ]
            kept_epoch = best.best_epoch + 1  # the epoch whose weights Keras restored
        acc = _accuracy(candidate, data.val, batch)
        drop = (parent_acc - acc) * 100
        log.info(
            "step %d/%d: validation accuracy %.2f%% (parent %.2f%%, %+.2f points), epoch %d of %d",
            step,
            cfg.steps,
            acc * 100,
            parent_acc * 100,
            -drop,
            kept_epoch,
            epochs,
        )
        if cfg.max_accuracy_drop is not None and drop > cfg.max_accuracy_drop:
            if not rounds:
                raise UserError(
                    f"the first pruning step ({parent_flops / flops:.2f}x fewer FLOPs) already "
                    f"loses {drop:.2f} points of validation accuracy ({parent_acc:.2%} -> "
                    f"{acc:.2%}), over --max-accuracy-drop {cfg.max_accuracy_drop}; nothing was "
                    "written. Try more --steps, more --epochs, a smaller --target-speedup or a "
                    "larger budget"
                )
            stopped = (
                f"step {step} lost {drop:.2f} points (> --max-accuracy-drop "
                f"{cfg.max_accuracy_drop}); kept step {rounds[-1].step} "
                f"({parent_flops / rounds[-1].flops:.2f}x fewer FLOPs)"
            )
            log.warning("stopped early: %s", stopped)
            break
        model = candidate
        origin = {k: origin[k][v] for k, v in keep.items()}
        history += rows
        rounds.append(
            Round(
                step=step,
                flops=flops,
                filters=filters,
                accuracy_pruned=acc_cut,
                accuracy=acc,
                epochs=epochs,
                kept_epoch=kept_epoch,
                seconds=round(time.perf_counter() - t_step, 2),
            )
        )
    if rounds[-1].flops > parent_flops / cfg.target_speedup * 1.001 and stopped is None:
        stopped = (
            f"every layer reached its floor (--min-keep {cfg.min_keep}) at "
            f"{parent_flops / rounds[-1].flops:.2f}x fewer FLOPs"
        )
        log.warning("target not reached: %s", stopped)
    for i, row in enumerate(history):
        row["epoch"] = i + 1

    from tl2edge.train.prune_output import write_run

    result = PruneResult(
        run_dir=out,
        parent=run.path,
        parent_flops=parent_flops,
        flops=rounds[-1].flops,
        parent_accuracy=parent_acc,
        accuracy=rounds[-1].accuracy,
        rounds=tuple(rounds),
        stopped=stopped,
        seconds=round(time.perf_counter() - t0, 2),
        measured=None,
    )
    result = write_run(
        cfg,
        result,
        run=run,
        parent=parent,
        model=model,
        data=data,
        history=history,
        origin=origin,
        batch_size=batch,
    )
    if stopped:
        log.warning("the target %sx was not reached: %s", cfg.target_speedup, stopped)
    log.info(
        "pruned run ready: %s (%.2fx fewer FLOPs, accuracy %.2f%% vs %.2f%%) in %.0f s",
        out,
        result.speedup,
        result.accuracy * 100,
        result.parent_accuracy * 100,
        result.seconds,
    )
    return result
