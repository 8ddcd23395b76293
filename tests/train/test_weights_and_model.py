"""Backbone weights (--weights modes), freezing, and the model contract.

Run: .venv/bin/pytest tests/train/test_weights_and_model.py -q
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tl2edge.errors import UserError
from tl2edge.train import model as vgg
from tl2edge.train.weights import (
    IMAGENET_FILE,
    backbone_arrays,
    load_backbone_weights,
    save_backbone_npz,
)


def _model(classes: int = 3):
    return vgg.build_model(classes, image_size=32, dense_units=16)


def test_imagenet_weights_come_from_the_keras_cache(tmp_path, monkeypatch, imagenet_like_h5):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    expected = imagenet_like_h5(tmp_path / "kh" / "models" / IMAGENET_FILE)
    model = _model()
    desc = load_backbone_weights(model, "imagenet")
    assert str(tmp_path / "kh" / "models" / IMAGENET_FILE) in desc
    got = backbone_arrays(model.get_layer("vgg16"))
    assert set(got) == set(expected)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


def test_imagenet_offline_and_not_cached_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(UserError) as exc:
        load_backbone_weights(_model(), "imagenet")
    message = str(exc.value)
    assert (
        IMAGENET_FILE in message and str(tmp_path / "empty" / "models" / IMAGENET_FILE) in message
    )


def test_npz_round_trip_is_float16_exact(tmp_path):
    source = _model()
    path = save_backbone_npz(source.get_layer("vgg16"), tmp_path / "bb.npz")
    with np.load(path) as archive:
        assert all(archive[k].dtype == np.float16 for k in archive.files)
    target = _model(5)
    load_backbone_weights(target, str(path))
    a = backbone_arrays(source.get_layer("vgg16"))
    b = backbone_arrays(target.get_layer("vgg16"))
    assert all(np.array_equal(a[k].astype(np.float16).astype(np.float32), b[k]) for k in a)


def test_keras_weights_file_loads(tmp_path):
    source = _model()
    path = tmp_path / "bb.weights.h5"
    source.get_layer("vgg16").save_weights(path)
    target = _model()
    load_backbone_weights(target, str(path))
    a, b = backbone_arrays(source.get_layer("vgg16")), backbone_arrays(target.get_layer("vgg16"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_wrong_shape_weights_are_refused_with_the_layer_named(tmp_path):
    arrays = backbone_arrays(_model().get_layer("vgg16"))
    arrays["block1_conv1/0"] = np.zeros((3, 3, 1, 64), np.float16)  # a grayscale first layer
    np.savez_compressed(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=r"block1_conv1/0 has shape \(3, 3, 1, 64\)"):
        load_backbone_weights(_model(), str(tmp_path / "bad.npz"))
    # a legacy .h5 with the wrong layout
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(UserError, match="does not fit VGG16"):
        load_backbone_weights(_model(), str(tmp_path / "other.weights.h5"))


def test_missing_weights_path_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no such file or run dir"):
        load_backbone_weights(_model(), str(tmp_path / "nope.npz"))


def test_set_trainable_freezes_as_documented():
    model = _model()
    vgg_layer = model.get_layer("vgg16")
    vgg.set_trainable(model, "frozen")
    assert not vgg_layer.trainable and model.get_layer("probs").trainable
    assert all(not w.trainable for w in vgg_layer.weights)
    vgg.set_trainable(model, 2)
    trainable = {
        lay.name.split("_")[0] for lay in vgg_layer.layers if lay.trainable and lay.weights
    }
    assert trainable == {"block4", "block5"}
    vgg.set_trainable(model, "all")
    assert all(lay.trainable for lay in vgg_layer.layers if lay.weights)


def test_preprocessing_is_inside_the_model():
    model = _model()
    rgb = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    pre = model.get_layer("preprocess")(rgb)
    expected = rgb[..., ::-1] - np.array(vgg.CAFFE_MEAN_BGR, np.float32)
    assert np.allclose(np.asarray(pre), expected, atol=1e-4)
    probs = model.predict(rgb, verbose=0)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_augmentation_stays_out_of_the_inference_model():
    model = _model()
    trainer = vgg.training_model(model, augment=True, seed=0)
    assert "augment" in [lay.name for lay in trainer.layers]
    assert "augment" not in [lay.name for lay in model.layers]


def test_a_keras_weights_file_of_another_model_is_not_half_loaded(tmp_path):
    """Keras itself only warns on a partial load; tl2edge refuses it."""
    other = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Conv2D(64, 3, name="block1_conv1")]
    )
    other.save_weights(tmp_path / "partial.weights.h5")
    with pytest.raises(UserError, match="does not fit VGG16"):
        load_backbone_weights(_model(), str(tmp_path / "partial.weights.h5"))
