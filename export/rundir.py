"""Reading a training run dir: its labels, config, Keras model and images.

This is the only part of the export stage that needs TensorFlow (to load `model.keras`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tl2edge.errors import UserError
from tl2edge.images import IMAGE_EXTENSIONS, BadImage, decode_rgb

log = logging.getLogger("tl2edge.export")

RUN_FILES = ("model.keras", "labels.json", "config.json", "state.json")


@dataclass(frozen=True)
class Run:
    path: Path
    labels: tuple[str, ...]
    config: dict[str, Any]  # the run's TrainConfig as JSON

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def model_path(self) -> Path:
        return self.path / "model.keras"


def open_run(run_dir: str | Path) -> Run:
    """Check that `run_dir` is a finished training run, or raise UserError saying why not."""
    path = Path(run_dir)
    if not path.exists():
        raise UserError(f"run dir {path} does not exist; pass the --out folder of `tl2edge train`")
    if not path.is_dir():
        raise UserError(f"run dir {path} is not a folder; pass the --out folder of `tl2edge train`")
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    if missing:
        raise UserError(
            f"{path} is not a tl2edge run dir: missing {', '.join(missing)} "
            "(expected the --out folder of a finished `tl2edge train`)"
        )
    try:
        state = json.loads((path / "state.json").read_text())
        labels = json.loads((path / "labels.json").read_text())
        config = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: a run file is not valid JSON ({exc})") from exc
    if state.get("status") != "complete":
        raise UserError(
            f"the run in {path} is not complete (status {state.get('status')!r}); "
            f"finish it first: tl2edge train ... --out {path} --resume"
        )
    if not isinstance(labels, list) or len(labels) < 2:
        raise UserError(f"{path}/labels.json must list at least 2 class names, got {labels!r}")
    if "image_size" not in config or "data_dir" not in config:
        raise UserError(f"{path}/config.json lacks image_size/data_dir; not a tl2edge run config")
    return Run(path=path, labels=tuple(str(x) for x in labels), config=config)


def load_keras_model(run: Run) -> Any:
    """The run's inference model, checked against labels.json and the configured image size."""
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


def load_run_images(run: Run) -> tuple[Images, Images]:
    """(training, validation) images of the run, reproduced exactly as training split them."""
    from tl2edge.train.data import load_data

    cfg = run.config
    data_dir = Path(cfg["data_dir"])
    if not data_dir.is_dir():
        raise UserError(
            f"the run's data dir {data_dir} (from {run.path}/config.json) does not exist here; "
            "the quality gates measure accuracy on its validation images: restore the folder "
            "or re-create it at that path"
        )
    data = load_data(
        data_dir,
        image_size=run.image_size,
        val_dir=cfg.get("val_dir"),
        val_split=float(cfg.get("val_split", 0.2)),
        seed=int(cfg.get("seed", 42)),
        skip_bad_images=True,
    )
    if tuple(data.classes) != run.labels:
        raise UserError(
            f"the data dir {data_dir} now has classes {list(data.classes)}, but the run was "
            f"trained on {list(run.labels)}; restore the folder as it was for training"
        )
    if data.train.x is None:  # too big for memory: decode the validation images only
        val_x = np.stack([decode_rgb(p, run.image_size) for p in data.val.paths])
        train = Images(None, paths=tuple(data.train.paths), image_size=run.image_size)
        return train, Images(val_x, data.val.y)
    return Images(data.train.x), Images(data.val.x, data.val.y)


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
