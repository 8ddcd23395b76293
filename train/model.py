"""VGG16 with a new classification head, preprocessing inside the model.

Input: raw RGB pixels 0..255, NHWC (float32 here; the ONNX export takes uint8).
Output: `probs`, float32 softmax over the target classes. The layer names below are part
of the run dir contract: `vgg16` is the backbone that `--weights RUN_DIR` transfers.
"""

from __future__ import annotations

import keras
from keras import layers, ops

BACKBONE = "vgg16"
VGG_BLOCKS = ("block1", "block2", "block3", "block4", "block5")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="tl2edge")
class CaffePreprocess(layers.Layer):
    """VGG16's "caffe" preprocessing: RGB -> BGR, minus the ImageNet channel means, no scaling."""

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        x = ops.flip(x, axis=-1)
        return x - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=self.compute_dtype)


def build_model(
    num_classes: int,
    *,
    image_size: int,
    dense_units: int = 256,
    dropout: float = 0.5,
    backbone: keras.Model | None = None,
) -> keras.Model:
    """The inference model: image -> preprocess -> VGG16 conv base -> head -> probs (float32).

    `backbone`: a conv base named `vgg16` to use instead of Keras' VGG16 (a pruned one).
    """
    image = keras.Input((image_size, image_size, 3), name="image")
    x = CaffePreprocess(name="preprocess")(image)
    if backbone is None:
        backbone = keras.applications.VGG16(
            include_top=False, weights=None, input_shape=(image_size, image_size, 3), name=BACKBONE
        )
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    # float32 even under mixed precision: a float16 softmax saturates.
    probs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(image, probs, name="tl2edge_vgg16")


def augmentation(seed: int) -> keras.Sequential:
    """Random flip, rotation, zoom and contrast on 0..255 pixels; used in training only."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.08, seed=seed + 1),
            layers.RandomZoom(0.1, seed=seed + 2),
            layers.RandomContrast(0.2, seed=seed + 3),
        ],
        name="augment",
    )


def training_model(model: keras.Model, *, augment: bool, seed: int) -> keras.Model:
    """What `fit` trains: the inference model, behind augmentation layers when asked."""
    if not augment:
        return model
    image = keras.Input(model.input_shape[1:], name="image")
    return keras.Model(image, model(augmentation(seed)(image)), name="tl2edge_train")


def set_trainable(model: keras.Model, backbone: str | int) -> None:
    """backbone: "frozen" (head only), "all", or N = the top N VGG blocks trainable."""
    vgg = model.get_layer(BACKBONE)
    if backbone == "frozen":
        vgg.trainable = False
        return
    vgg.trainable = True
    trainable_blocks = set(
        VGG_BLOCKS if backbone == "all" else VGG_BLOCKS[len(VGG_BLOCKS) - int(backbone) :]
    )
    for layer in vgg.layers:
        layer.trainable = layer.name.split("_")[0] in trainable_blocks


def he_reinit(model: keras.Model, seed: int) -> None:
    """Re-initialise the backbone's conv kernels with He-normal for training from scratch.

    Keras' VGG16 uses Glorot init; a plain 13-layer ReLU stack without batch norm barely
    moves from it within a CPU budget, while He init keeps activations at scale.
    """
    init = keras.initializers.HeNormal(seed=seed)
    # The first conv sees caffe-preprocessed pixels (spread ~60, not ~1): scale its kernel
    # down by that much, which is the same as feeding it normalised inputs.
    scale = 1.0 / 60.0
    for layer in model.get_layer(BACKBONE).layers:
        if isinstance(layer, layers.Conv2D):
            layer.kernel.assign(init(layer.kernel.shape) * scale)
            layer.bias.assign(ops.zeros(layer.bias.shape))
            scale = 1.0


def load_inference_model(path) -> keras.Model:
    """Load a run's model.keras (the custom preprocessing layer is registered by this module)."""
    return keras.saving.load_model(path, compile=False)
