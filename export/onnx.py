"""Keras -> ONNX: conversion with tf2onnx, checking, graph optimization, metadata, parity.

The graph takes `image` uint8 [batch, H, W, 3] (raw RGB pixels) and returns `probs` float32
[batch, C]; the cast to float and VGG16's caffe preprocessing are inside, so clients send
pixels. TensorFlow is imported only by `convert_keras` (reading a run); everything else works
on .onnx files alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tl2edge.manifest import INPUT_NAME, OUTPUT_NAME

BATCH_DIM = "batch"
MIN_OPSET, MAX_OPSET = 13, 18

log = logging.getLogger("tl2edge.export")


def convert_keras(model: Any, *, opset: int) -> Any:
    """Convert a Keras inference model (float 0..255 NHWC input) to an onnx.ModelProto."""
    import tensorflow as tf
    import tf2onnx

    # tf2onnx logs every optimizer pass at INFO; the export logs its own summary.
    logging.getLogger("tf2onnx").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    _, height, width, channels = model.input_shape
    spec = [tf.TensorSpec((None, height, width, channels), tf.uint8, name=INPUT_NAME)]

    # The uint8 -> float32 cast lives in the graph so the wire format is one byte per pixel.
    @tf.function(input_signature=spec)
    def serve(image):
        return {OUTPUT_NAME: model(tf.cast(image, tf.float32), training=False)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset)
    _name_batch_dim(proto)
    proto.producer_name = "tl2edge"
    return proto


def _name_batch_dim(proto: Any) -> None:
    """tf2onnx names the dynamic batch `unk__N`; give input and output the same symbolic name."""
    names = [i.name for i in proto.graph.input]
    outs = [o.name for o in proto.graph.output]
    if names != [INPUT_NAME] or outs != [OUTPUT_NAME]:
        raise RuntimeError(
            f"converted graph has inputs {names} and outputs {outs}; "
            f"expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]"
        )
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH_DIM


def check(path: str | Path) -> None:
    """onnx.checker on a saved model (by path, so models over 2 GB work too)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def optimize(src: str | Path, dst: str | Path) -> None:
    """Save ORT's basic (provider-independent) graph optimizations: constant folding, redundant
    node elimination. Extended/layout fusions are left to the runtime because they are specific
    to the execution provider the model will run on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def set_metadata(path: str | Path, props: dict[str, str]) -> None:
    """Replace the model's metadata_props with `props` (strings), in place."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def metadata_for(manifest_dict: dict[str, Any]) -> dict[str, str]:
    """metadata_props for a bundle: the whole manifest, readable by `Manifest.from_dict`, with
    an empty sha256 (the file's hash changes with the props themselves), plus labels and
    tensor specs as separate keys for tools that look there."""
    from tl2edge.manifest import METADATA_KEY

    body = {**manifest_dict, "sha256": ""}
    return {
        METADATA_KEY: json.dumps(body, sort_keys=True),
        "labels": json.dumps(manifest_dict["labels"]),
        "input": json.dumps(manifest_dict["input"]),
        "output": json.dumps(manifest_dict["output"]),
        "preprocessing": str(manifest_dict.get("preprocessing", "")),
    }


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
