"""int8 and fp16 variants: they load in ONNX Runtime, keep the I/O contract and agree with fp32.
Run: .venv/bin/pytest tests/export -q

Bounds (on the fixture's validation images and on random pixels): int8 top-1 agreement with
fp32 >= 80% and max |probs difference| <= 0.1; fp16 agreement 100% and difference <= 1e-2.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tl2edge.errors import UserError
from tl2edge.export.quantize import (
    CALIBRATION_BATCH,
    PRESETS,
    ImageReader,
    QuantRecipe,
    auto_candidates,
    recipe_for,
)


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


@pytest.fixture(scope="module")
def pixels(spec):
    return np.random.default_rng(11).integers(0, 256, (16, spec.size, spec.size, 3), np.uint8)


def test_int8_is_static_qdq_with_per_channel_weights(exported):
    model = onnx.load(str(exported.row("int8").path / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 13 and ops.count("DequantizeLinear") >= 13
    assert not any(op in ops for op in ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"))
    inits = {i.name: i for i in model.graph.initializer}
    per_channel = [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].data_type == onnx.TensorProto.INT8
        and len(inits[n.input[1]].dims) == 1
        and inits[n.input[1]].dims[0] > 1
    ]
    assert len(per_channel) >= 13  # every conv kernel has one scale per output channel


def test_int8_agrees_with_fp32_and_keeps_the_contract(exported, pixels, spec):
    fp32 = _run(exported.row("fp32").path / "model.onnx", pixels)
    int8 = _run(exported.row("int8").path / "model.onnx", pixels)
    assert int8.dtype == np.float32 and int8.shape == (16, len(spec.labels))
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.8
    assert np.abs(int8 - fp32).max() <= 0.1
    np.testing.assert_allclose(int8.sum(axis=1), 1.0, atol=1e-5)  # float Softmax, no Q/DQ
    graph = onnx.load(str(exported.row("int8").path / "model.onnx")).graph
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    consumers = [n.op_type for n in graph.node if softmax.output[0] in n.input]
    producer = next(n for n in graph.node if softmax.input[0] in n.output)
    assert consumers == [] and producer.op_type in ("Gemm", "Add", "MatMul")
    row = exported.row("int8")
    assert row.agreement >= 0.8 and row.max_abs_diff <= 0.1
    assert row.size_bytes <= 0.3 * exported.row("fp32").size_bytes


def test_fp16_has_half_weights_and_float32_io(exported, pixels):
    path = exported.row("fp16").path / "model.onnx"
    model = onnx.load(str(path))
    types = {i.data_type for i in model.graph.initializer if len(i.dims) == 4}
    assert types == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    fp32 = _run(exported.row("fp32").path / "model.onnx", pixels)
    fp16 = _run(path, pixels)
    assert fp16.dtype == np.float32
    assert np.abs(fp16 - fp32).max() <= 1e-2
    assert (fp16.argmax(1) == fp32.argmax(1)).all()
    assert exported.row("fp16").size_bytes <= 0.55 * exported.row("fp32").size_bytes


def test_auto_quantization_reports_every_candidate_and_the_winner(exported):
    import json

    report = json.loads((exported.row("int8").path / "report.json").read_text())
    q = report["quantization"]
    assert q["mode"] == "auto"
    assert len(q["candidates"]) >= len(PRESETS)
    passing = [c for c in q["candidates"] if c["passed"]]
    fastest = min(c["latency_p50_ms"] for c in passing)
    first_near_fastest = next(c for c in passing if c["latency_p50_ms"] <= fastest * 1.03)
    assert q["chosen"] == first_near_fastest["recipe"] == exported.row("int8").quantization
    assert "fastest" in q["reason"]


def test_recipes_are_validated_with_the_fix_in_the_message():
    with pytest.raises(UserError, match="activations must be one of u8, s8"):
        QuantRecipe("x", activations="u16")
    with pytest.raises(UserError, match="--calibration-method must be one of"):
        QuantRecipe("x", calibration="kl")
    with pytest.raises(UserError, match="--quantization must be one of auto"):
        recipe_for("dynamic", "minmax")
    assert recipe_for("s8s8", "entropy") == QuantRecipe(
        "s8s8", activations="s8", calibration="entropy"
    )
    assert "reduce_range" in str(PRESETS["u8s8-reduce-range"])


def test_auto_tries_every_preset_first_then_other_calibration_methods():
    names = [(r.name, r.calibration) for r in auto_candidates("entropy")]
    assert names[: len(PRESETS)] == [(n, "entropy") for n in PRESETS]
    assert names[len(PRESETS) :] == [("u8s8", "minmax"), ("u8s8", "percentile")]


def test_calibration_reader_batches_and_supports_strided_ranges(spec):
    images = np.zeros((CALIBRATION_BATCH * 2 + 3, spec.size, spec.size, 3), np.uint8)
    reader = ImageReader(images)
    assert len(reader) == 3
    assert [b["image"].shape[0] for b in reader] == [CALIBRATION_BATCH, CALIBRATION_BATCH, 3]
    reader.set_range(1, 2)
    assert reader.get_next()["image"].shape[0] == CALIBRATION_BATCH
    assert reader.get_next() is None
