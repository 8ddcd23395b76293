"""Keras -> ONNX conversion and its parity gate. Run: .venv/bin/pytest tests/export -q

tf2onnx's Keras 3 path has no upstream CI: these tests are what protects it here.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tl2edge.export import gates
from tl2edge.export import onnx as onnx_step


@pytest.fixture(scope="module")
def keras_model(run_dir):
    from tl2edge.train.model import load_inference_model

    return load_inference_model(run_dir / "model.keras")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_fp32_matches_keras_on_random_pixels(exported, keras_model, spec):
    size, labels = spec.size, spec.labels
    pixels = np.random.default_rng(7).integers(0, 256, (5, size, size, 3), dtype=np.uint8)
    expected = keras_model.predict(pixels.astype(np.float32), verbose=0)
    session = _session(exported.row("fp32").path / "model.onnx")
    got = session.run(None, {"image": pixels})[0]
    assert got.dtype == np.float32 and got.shape == (5, len(labels))
    assert onnx_step.max_abs_diff(expected, got) <= 1e-4
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)  # softmax inside the graph


def test_signature_is_uint8_pixels_in_probs_out_with_a_named_dynamic_batch(exported, spec):
    size, labels = spec.size, spec.labels
    model = onnx.load(str(exported.row("fp32").path / "model.onnx"))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "image" and out.name == "probs"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == ["batch", size, size, 3]
    assert out_dims == ["batch", len(labels)]
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 17
    session = _session(exported.row("fp32").path / "model.onnx")
    for n in (1, 3):
        x = np.zeros((n, size, size, 3), np.uint8)
        assert session.run(None, {"image": x})[0].shape == (n, len(labels))


def test_preprocessing_is_inside_the_graph(exported, keras_model, spec):
    size = spec.size
    # The same raw pixels give the same answer: clients never subtract means or swap channels.
    pixels = np.full((1, size, size, 3), (200, 30, 90), np.uint8)
    session = _session(exported.row("fp32").path / "model.onnx")
    got = session.run(None, {"image": pixels})[0]
    swapped = session.run(None, {"image": pixels[..., ::-1].copy()})[0]
    expected = keras_model.predict(pixels.astype(np.float32), verbose=0)
    assert onnx_step.max_abs_diff(expected, got) <= 1e-4
    assert onnx_step.max_abs_diff(got, swapped) > 0


def test_parity_was_measured_and_recorded(exported):
    fp32 = exported.row("fp32")
    assert fp32.max_abs_diff <= 1e-4
    assert fp32.agreement == 1.0
    assert fp32.accuracy == exported.keras_accuracy == 1.0  # the fixture's labels


def test_parity_gate_message_has_numbers_and_advice():
    bad = gates.Quality(accuracy=0.5, agreement=0.75, max_abs_diff=0.03, images=12)
    with pytest.raises(gates.GateFailed, match=r"0\.03 > 0\.0001 on 12 .*--opset \(now 17"):
        gates.check_parity(bad, limit=1e-4, opset=17)
    gates.check_parity(gates.Quality(1.0, 1.0, 5e-5, 12), limit=1e-4, opset=17)


def test_opset_13_converts_too(keras_model, tmp_path, spec):
    size = spec.size
    proto = onnx_step.convert_keras(keras_model, opset=13)
    onnx.save(proto, str(tmp_path / "m.onnx"))
    onnx_step.check(tmp_path / "m.onnx")
    pixels = np.random.default_rng(1).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    got = _session(tmp_path / "m.onnx").run(None, {"image": pixels})[0]
    expected = keras_model.predict(pixels.astype(np.float32), verbose=0)
    assert onnx_step.max_abs_diff(expected, got) <= 1e-4
