"""int8 keeps the classifier head in float: probabilities sum to 1 and small ones survive.
Run: .venv/bin/pytest tests/export/test_quantize_head.py -q

A small hand-built ONNX classifier (conv -> pool -> MatMul + Add -> Softmax) with widely
spread logits runs through the same `preprocess` + `quantize_int8` as an export; the shared
export fixture checks the same on the converted Keras model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tl2edge.export.quantize import PRESETS, float_head, preprocess, quantize_int8

CLASSES = 6


def _classifier(path, *, spread: float) -> None:
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.05, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, spread, (8, CLASSES)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.linspace(-2, 2, CLASSES).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["feat"]),
        helper.make_node("MatMul", ["feat", "fc_w"], ["mm"], name="fc_matmul"),
        helper.make_node("Add", ["mm", "fc_b"], ["logits"], name="fc_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [None, 8, 8, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _probs(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("head")
    _classifier(d / "fp32.onnx", spread=0.2)
    preprocess(d / "fp32.onnx", d / "prepared.onnx")
    images = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3), np.uint8)
    quantize_int8(d / "prepared.onnx", d / "int8.onnx", images[:16], PRESETS["u8s8"], cache_dir=d)
    return d, images


def test_float_head_names_the_classifier_and_softmax(models):
    d, _ = models
    head = float_head(d / "prepared.onnx")
    ops = {n.name: n.op_type for n in onnx.load(str(d / "prepared.onnx")).graph.node}
    assert "Softmax" in [ops[n] for n in head]
    assert {ops[n] for n in head} - {"Softmax"} <= {"Gemm", "MatMul", "Add"}
    assert len(head) >= 2  # the Softmax and what computes the logits
    assert float_head(d / "fp32.onnx") == ["softmax", "fc_bias", "fc_matmul"]


def test_int8_softmax_and_logits_have_no_quantize_dequantize(models):
    d, _ = models
    graph = onnx.load(str(d / "int8.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    assert softmax.output[0] == "probs"  # straight to the graph output, no Q/DQ after it
    logits = producer[softmax.input[0]]
    assert logits.op_type in ("Gemm", "Add")  # float logits, not a DequantizeLinear
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # the body is quantized


def test_int8_probabilities_sum_to_one_and_small_scores_survive(models):
    d, images = models
    fp32 = _probs(d / "fp32.onnx", images)
    int8 = _probs(d / "int8.onnx", images)
    np.testing.assert_allclose(int8.sum(axis=1), 1.0, atol=1e-5)
    assert fp32.min() < 1e-3  # the model has small scores to lose
    small = fp32 < 1e-2
    assert (int8[small] > 0).all()  # on the old 1/255 grid these were rounded to 0
    # Off the 1/255 output grid: quantized probabilities would all be multiples of it.
    assert np.abs(int8 * 255 - np.round(int8 * 255)).max() > 1e-3
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9
