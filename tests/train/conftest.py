"""Fixtures for the training tests: tiny synthetic folders and one small finished run."""

from __future__ import annotations

import numpy as np
import pytest

from tl2edge.synth import write_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """3 target classes x 8 images, 32x32 PNG."""
    return write_dataset(
        tmp_path_factory.mktemp("data") / "tiny",
        task="target",
        per_class=8,
        size=32,
        classes=3,
        seed=3,
        progress=False,
    )


def _tiny_config(data, **overrides):
    """The smallest real training set-up: 32x32, from scratch, one epoch per phase."""
    from tl2edge.train.config import TrainConfig

    base = dict(
        data_dir=str(data),
        image_size=32,
        weights="none",
        epochs_head=1,
        epochs_finetune=1,
        batch_size=8,
        seed=1,
        tensorboard=False,
        dense_units=16,
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(data_dir, **overrides) -> TrainConfig`."""
    return _tiny_config


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, tiny_data):
    """A finished from-scratch run (two epochs) on `tiny_data`."""
    from tl2edge.train.fit import train

    return train(_tiny_config(tiny_data), tmp_path_factory.mktemp("runs") / "base")


@pytest.fixture
def imagenet_like_h5():
    """A writer for files with the layout of Keras' VGG16 notop ImageNet file."""
    return _make_imagenet_like_h5


def _make_imagenet_like_h5(path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a file with the layout of Keras' VGG16 notop ImageNet file; return its arrays."""
    import h5py
    import keras

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    rng = np.random.default_rng(seed)
    arrays = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        names = [layer.name for layer in vgg.layers]
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in vgg.layers:
            g = f.create_group(layer.name)
            weights = layer.get_weights()
            wnames = [f"{layer.name}_W_1:0".encode(), f"{layer.name}_b_1:0".encode()][
                : len(weights)
            ]
            g.attrs["weight_names"] = wnames
            for wname, w in zip(wnames, weights, strict=True):
                value = rng.normal(0, 0.05, w.shape).astype(np.float32)
                g.create_dataset(wname.decode(), data=value)
                arrays[f"{layer.name}/{wnames.index(wname)}"] = value
    return arrays
