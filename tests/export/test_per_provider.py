"""Each variant's quality on each available execution provider, in the manifest and report.

Run: .venv/bin/pytest tests/export/test_per_provider.py -q
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tl2edge.export import gates, per_provider
from tl2edge.manifest import read_manifest
from tl2edge.serve import providers as pv


def test_a_provider_that_breaks_the_gate_is_recorded_as_failed(monkeypatch):
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    good = np.eye(3)[y].astype(np.float32)  # right on every image
    wrong = np.eye(3)[(y + 1) % 3].astype(np.float32)  # wrong on every image
    cfg = SimpleNamespace(max_abs_diff=1e-4, max_accuracy_drop=1.0)
    quality_cpu = {v: gates.measure_quality(good, y, good) for v in ("fp32", "int8")}
    monkeypatch.setattr(pv, "auto_candidates", lambda: ["cpu", "openvino"])
    calls = []

    def predict_on(path: Path, device: str) -> np.ndarray:
        calls.append((path.name, device))
        return wrong if path.name == "int8.onnx" else good + 1e-6

    out = per_provider.measure(
        {"fp32": Path("fp32.onnx"), "int8": Path("int8.onnx")},
        quality_cpu,
        x=np.zeros((8, 4, 4, 3), np.uint8),
        y=y,
        keras_probs=good,
        fp32_probs=good,
        cfg=cfg,
        predict_on=predict_on,
    )
    assert calls == [("fp32.onnx", "openvino"), ("int8.onnx", "openvino")]  # CPU reused
    assert out["fp32"][pv.OPENVINO]["passed"] and out["int8"][pv.CPU]["passed"]
    bad = out["int8"][pv.OPENVINO]
    assert not bad["passed"] and bad["accuracy"] == 0.0 and "accuracy points" in bad["gate"]
    assert pv.gate_failures(out["int8"]) == {"openvino": "failed the accuracy gate at export"}
    assert pv.gate_failures(out["fp32"]) == {}
    assert "| int8 | OpenVINOExecutionProvider | 0.00% |" in per_provider.table(out)


def test_the_export_records_each_provider_in_manifest_and_report(exported):
    for row in exported.rows:
        manifest = read_manifest(row.path)
        assert set(manifest.providers) == {pv.PROVIDER[d] for d in pv.auto_candidates()}
        cpu = manifest.providers[pv.CPU]
        assert cpu["passed"] and cpu["accuracy"] == row.accuracy and cpu["device"] == "cpu"
        report = json.loads((row.path / "report.json").read_text())
        assert report["providers"][row.variant] == manifest.providers
    assert "## Per execution provider" in (exported.rows[0].path / "report.md").read_text()
