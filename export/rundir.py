"""Export's reader of a training run dir (the contract is `tl2edge.rundir`): the Keras
model and the images of the saved split.

This is the only part of the export stage that needs TensorFlow (to load the Keras model).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tl2edge import rundir
from tl2edge.errors import UserError
from tl2edge.images import IMAGE_EXTENSIONS, BadImage, decode_rgb
from tl2edge.rundir import RunDir

log = logging.getLogger("tl2edge.export")


@dataclass(frozen=True)
class Run:
    """A complete run as export sees it (read once through `tl2edge.rundir.RunDir`)."""

    dir: RunDir
    labels: tuple[str, ...]
    config: dict[str, Any]  # the run's TrainConfig as JSON

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def model_path(self) -> Path:
        return self.dir.model_path


def open_run(run_dir: str | Path) -> Run:
    """Check that `run_dir` is a finished training run, or raise UserError saying why not."""
    run = RunDir.open(run_dir)
    return Run(dir=run, labels=run.labels(), config=run.config_json())


def load_keras_model(run: Run) -> Any:
    """The run's inference model, checked against its labels and configured image size."""
    from tl2edge.train.model import load_inference_model

    try:
        model = load_inference_model(run.model_path)
    except Exception as exc:  # Keras raises a zoo of types for a damaged zip/h5
        raise UserError(
            f"{run.model_path} could not be loaded ({exc.__class__.__name__}: {str(exc)[:200]}); "
            "the file is corrupt or not a Keras model: re-run training or restore it"
        ) from exc
    expected_in = (None, run.image_size, run.image_size, 3)
    if tuple(model.input_shape) != expected_in or model.output_shape[-1] != len(run.labels):
        raise UserError(
            f"{run.model_path}: input {model.input_shape} / output {model.output_shape} do not "
            f"match the run ({run.image_size}px, {len(run.labels)} labels)"
        )
    return model


@dataclass(frozen=True)
class Images:
    """Decoded uint8 images [N, S, S, 3] with labels (validation) or without (calibration).

    A run trained on streamed data gives its training images as `paths` (x None): only the
    calibration sample is decoded."""

    x: np.ndarray | None
    y: np.ndarray | None = None
    paths: tuple[str, ...] = ()
    image_size: int = 0


def load_run_data(run: Run, *, allow_changed_data: bool = False):
    """The run's data (`tl2edge.train.data.Data`): the files of its saved split, after checking
    that the data dir is what training saw (see `RunDir.check_data`). The validation images
    are always decoded; training images too big for memory stay on disk (`x` None)."""
    from tl2edge.train.data import load_data, load_saved_split

    split = run.dir.check_data(allow_changed=allow_changed_data)
    if split is not None:
        train_files, val_files = run.dir.split_files(split)
        missing = [str(p) for p, _ in train_files + val_files if not p.is_file()]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise UserError(
                f"{len(missing)} file(s) of the run's saved split are gone: "
                f"{', '.join(missing[:5])}{more}; restore the data dir as it was for training"
            )
        data = load_saved_split(split, train_files, val_files, image_size=run.image_size)
    else:
        cfg = run.config
        log.warning(
            "%s has no %s (written by an older tl2edge): replaying the split from %s",
            run.path,
            rundir.SPLIT,
            rundir.CONFIG,
        )
        data = load_data(
            cfg["data_dir"],
            image_size=run.image_size,
            val_dir=cfg.get("val_dir"),
            val_split=float(cfg.get("val_split", 0.2)),
            seed=int(cfg.get("seed", 42)),
            skip_bad_images=True,
        )
        recorded = run.dir.record().get("data_fingerprint")
        if recorded and recorded != data.fingerprint and not allow_changed_data:
            raise UserError(
                f"the data dir {cfg['data_dir']} changed since the run in {run.path} was trained "
                "(its data fingerprint differs from run.json's); restore the folder as it was, or "
                "pass --allow-changed-data"
            )
    if tuple(data.classes) != run.labels:
        raise UserError(
            f"the data dir {run.config['data_dir']} now has classes {list(data.classes)}, but the "
            f"run was trained on {list(run.labels)}; restore the folder as it was for training"
        )
    if data.val.x is None:  # streamed: the validation images are few enough to decode
        val = dataclasses.replace(data.val, x=data.val.pixels(np.arange(len(data.val))))
        data = dataclasses.replace(data, val=val)
    return data


def load_run_images(run: Run, *, allow_changed_data: bool = False) -> tuple[Images, Images]:
    """(training, validation) images of the run's saved split (see `load_run_data`)."""
    data = load_run_data(run, allow_changed_data=allow_changed_data)
    return run_images(data, image_size=run.image_size)


def run_images(data, *, image_size: int) -> tuple[Images, Images]:
    """(training, validation) Images of a run's data as `load_run_data` returns it."""
    val = Images(data.val.x, data.val.y)
    if data.train.x is None:  # too big for memory: only the calibration sample is decoded
        return Images(None, paths=tuple(data.train.files()), image_size=image_size), val
    return Images(data.train.x), val


def load_calibration_dir(folder: str | Path, *, image_size: int) -> Images:
    """Every image under `folder` (any depth), decoded like training; UserError if there are
    none or any cannot be read (calibrating on fewer images than asked would be silent)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--calibration-dir {folder} does not exist or is not a folder")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise UserError(
            f"--calibration-dir {folder} has no images ({'/'.join(IMAGE_EXTENSIONS)}); "
            "point it at a folder of representative images, or leave it out to use the run's "
            "training images"
        )
    pixels, bad = [], []
    for p in files:
        try:
            pixels.append(decode_rgb(p, image_size))
        except (BadImage, OSError) as exc:
            bad.append(f"  {p}: {exc}")
    if bad:
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise UserError(
            f"--calibration-dir {folder}: {len(bad)} of {len(files)} image(s) could not be "
            "read:\n" + "\n".join(bad[:10]) + more + "\nRemove or replace them."
        )
    return Images(np.stack(pixels))


def sample(images: Images, n: int, *, seed: int) -> np.ndarray:
    """Up to `n` images picked at random (seeded), in a stable order."""
    count = len(images.paths) if images.x is None else len(images.x)
    idx = np.arange(count)
    if count > n:
        idx = np.sort(np.random.default_rng(seed).choice(count, n, replace=False))
    if images.x is None:
        return np.stack([decode_rgb(images.paths[i], images.image_size) for i in idx])
    return images.x if count <= n else images.x[idx]
