"""Where the VGG16 backbone's starting weights come from (`--weights`).

- `imagenet`: Keras' own file in its cache ($KERAS_HOME/models, default ~/.keras/models),
  downloaded there by Keras when online.
- `none`: from scratch.
- PATH: a weights file: tl2edge's compact backbone archive (`.npz`, float16), a Keras
  weights file of a VGG16 conv base (`.weights.h5`), or a file in the layout of Keras'
  ImageNet file (`.h5`).
- RUN_DIR: the backbone of an earlier run (e.g. source-task pretraining); its head is dropped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from tl2edge.errors import UserError

log = logging.getLogger("tl2edge.train")

IMAGENET_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + IMAGENET_FILE
IMAGENET_MD5 = "6d6bbae143d832006294945121d1f1fc"


def keras_cache_dir() -> Path:
    """Keras' cache for application weights: $KERAS_HOME/models, else ~/.keras/models."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def imagenet_weights_file() -> Path:
    """The cached ImageNet file, downloading it (through Keras) when it is not cached yet."""
    cached = keras_cache_dir() / IMAGENET_FILE
    if cached.is_file():
        return cached
    import keras

    try:
        return Path(
            keras.utils.get_file(
                IMAGENET_FILE,
                IMAGENET_URL,
                cache_subdir="models",
                file_hash=IMAGENET_MD5,
                cache_dir=str(keras_cache_dir().parent),
            )
        )
    except Exception as exc:
        raise UserError(
            f"ImageNet weights for VGG16 are not in Keras' cache and could not be downloaded ({exc.__class__.__name__}).\n"
            f"Place {IMAGENET_FILE} (from {IMAGENET_URL}) at {cached}\n"
            "(set KERAS_HOME to use another cache folder), or pick other weights: "
            "--weights none | PATH | RUN_DIR"
        ) from exc


def backbone_arrays(vgg) -> dict[str, np.ndarray]:
    """The backbone's weights keyed `layer/index` (the .npz archive layout)."""
    return {
        f"{layer.name}/{i}": np.asarray(w)
        for layer in vgg.layers
        for i, w in enumerate(layer.get_weights())
    }


def save_backbone_npz(vgg, path: str | Path) -> Path:
    """Write the backbone as float16, compressed: ~27 MB for VGG16 instead of 59 MB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.astype(np.float16) for k, v in backbone_arrays(vgg).items()}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def _set_from_arrays(vgg, arrays: dict[str, np.ndarray], source: str) -> None:
    expected = backbone_arrays(vgg)
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise UserError(
            f"weights file {source} does not hold VGG16's backbone: missing {', '.join(missing[:4])}"
        )
    for key, want in expected.items():
        if arrays[key].shape != want.shape:
            raise UserError(
                f"weights file {source} does not fit VGG16's backbone: {key} has shape "
                f"{tuple(arrays[key].shape)}, VGG16 needs {tuple(want.shape)}"
            )
    for layer in vgg.layers:
        n = len(layer.get_weights())
        if n:
            layer.set_weights([arrays[f"{layer.name}/{i}"].astype(np.float32) for i in range(n)])


def load_backbone_weights(model, spec: str) -> str:
    """Load `--weights` into the model's `vgg16` layer; returns a description for the run record."""
    from tl2edge.train.model import BACKBONE

    vgg = model.get_layer(BACKBONE)
    if spec == "none":
        return "none (from scratch)"
    if spec == "imagenet":
        path = imagenet_weights_file()
        _load_keras_file(vgg, path)
        return f"imagenet ({path})"
    path = Path(spec)
    if not path.exists():
        raise UserError(f"--weights {spec}: no such file or run dir (or use imagenet | none)")
    if path.is_dir():
        from tl2edge.rundir import RunDir
        from tl2edge.train.model import load_inference_model

        try:
            model_file = RunDir.open(path).model_path
        except UserError as exc:
            raise UserError(
                f"--weights {spec} is a folder but not a finished run dir: {exc}"
            ) from exc
        try:
            source = load_inference_model(model_file).get_layer(BACKBONE)
        except (ValueError, OSError) as exc:
            raise UserError(f"--weights {spec}: cannot read {model_file} ({exc})") from exc
        _set_from_arrays(vgg, backbone_arrays(source), str(model_file))
        return f"backbone of run {path}"
    if path.suffix == ".npz":
        try:
            with np.load(path) as archive:
                arrays = {k: archive[k] for k in archive.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"--weights {spec}: not a readable .npz archive ({exc})") from exc
        _set_from_arrays(vgg, arrays, str(path))
        return f"file {path}"
    if path.suffix in (".h5", ".hdf5", ".keras"):
        _load_keras_file(vgg, path)
        return f"file {path}"
    raise UserError(
        f"--weights {spec}: unknown weights format {path.suffix!r}; use .npz, .weights.h5 or .h5"
    )


def _load_keras_file(vgg, path: Path) -> None:
    import warnings

    # Keras only warns when a .weights.h5 file has no group for a layer and keeps that
    # layer's fresh weights; here a partial load is an error.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            vgg.load_weights(str(path))
        except (ValueError, OSError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"weights file {path} does not fit VGG16's backbone (include_top=False): {first}"
            ) from exc
    skipped = [str(w.message) for w in caught if "skipping" in str(w.message).lower()]
    if skipped:
        raise UserError(
            f"weights file {path} does not fit VGG16's backbone (include_top=False): "
            f"{skipped[0][:200]}"
        )
