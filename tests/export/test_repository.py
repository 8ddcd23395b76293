"""The model repository an export writes: layout, manifest, metadata, report, atomicity.
Run: .venv/bin/pytest tests/export -q
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest

from tl2edge.export import export, repository
from tl2edge.export.config import ExportConfig
from tl2edge.manifest import METADATA_KEY, Manifest, list_models, read_manifest


def _snapshot(root: Path) -> dict[str, int]:
    """Every path under `root` (hidden ones too) with its size."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def test_layout_is_one_model_per_variant_sharing_the_version(exported):
    repo = exported.repository
    assert list_models(repo) == {"shapes-fp16": [1], "shapes-fp32": [1], "shapes-int8": [1]}
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging left behind
    for row in exported.rows:
        assert row.path == repo / f"shapes-{row.variant}" / "1"
        files = sorted(p.name for p in row.path.iterdir())
        assert files == [
            "export_config.json",
            "manifest.json",
            "model.onnx",
            "report.json",
            "report.md",
            "report.png",
        ]
        assert row.size_bytes == (row.path / "model.onnx").stat().st_size


def test_manifest_schema_reads_back(exported, spec):
    for row in exported.rows:
        m = read_manifest(row.path)  # verifies the sha256 too
        assert (m.name, m.version, m.variant) == (f"shapes-{row.variant}", 1, row.variant)
        assert m.labels == list(spec.labels)
        assert (m.input.name, m.input.datatype, m.input.shape) == (
            "image",
            "UINT8",
            [-1, spec.size, spec.size, 3],
        )
        assert (m.output.name, m.output.datatype, m.output.shape) == (
            "probs",
            "FP32",
            [-1, len(spec.labels)],
        )
        assert m.metrics["accuracy"] == row.accuracy and m.metrics["agreement"] == row.agreement
        assert {t["batch_size"] for t in m.metrics["latency_cpu"]} == {1, 8}
        assert m.metrics["accuracy_gate"]["passed"] and m.passed_gate("CPUExecutionProvider")
        assert set(m.tools) >= {"onnx", "onnxruntime", "tf2onnx", "tl2edge"}
        assert m.source["model_sha256"] and m.created.endswith("Z")
        assert (m.quantization is not None) == (row.variant == "int8")
    q = read_manifest(exported.row("int8").path).quantization
    assert q["format"] == "QDQ" and q["method"] == "static" and q["calibration_images"] == 16


def test_metadata_props_round_trip_to_the_manifest(exported, spec):
    for row in exported.rows:
        session = ort.InferenceSession(
            str(row.path / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        props = session.get_modelmeta().custom_metadata_map
        assert json.loads(props["labels"]) == list(spec.labels)
        assert json.loads(props["input"])["shape"] == [-1, spec.size, spec.size, 3]
        embedded = json.loads(props[METADATA_KEY])
        assert embedded["sha256"] == ""  # a lone .onnx file is self-describing (serve reads it)
        assert Manifest.from_dict(embedded).variant == row.variant
        manifest = read_manifest(row.path)
        assert Manifest.from_dict({**embedded, "sha256": manifest.sha256}) == manifest


def test_report_and_config_are_saved_next_to_the_export(exported):
    row = exported.row("fp32")
    report = json.loads((row.path / "report.json").read_text())
    assert [v["variant"] for v in report["variants"]] == ["fp32", "int8", "fp16"]
    for v in report["variants"]:
        assert v["size_bytes"] > 0 and v["latency_p50_ms"] > 0 and v["throughput_b8"] > 0
    md = (row.path / "report.md").read_text()
    assert "| int8 | shapes-int8/1 |" in md and "tl2edge serve --repository" in md
    assert (row.path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = ExportConfig(**json.loads((row.path / "export_config.json").read_text()))
    assert cfg.variants == ("fp32", "int8", "fp16") and cfg.calibration_samples == 16
    assert exported.next_command == f"tl2edge serve --repository {exported.repository}"


def test_next_version_overwrite_and_a_failure_midway(run_dir, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    kwargs = dict(repository=repo, name="m", variants=("fp32",), bench_seconds=0.05)
    first = export(run_dir, **kwargs)
    second = export(run_dir, **kwargs)
    assert (first.version, second.version) == (1, 2)
    before = _snapshot(repo)

    # A failure after conversion, while the report is written: REPO stays exactly as it was.
    def boom(*args, **kwargs):
        raise RuntimeError("disk full (injected)")

    monkeypatch.setattr("tl2edge.export.report.write_report", boom)
    with pytest.raises(RuntimeError, match="injected"):
        export(run_dir, **kwargs, version=2, overwrite=True)
    assert _snapshot(repo) == before
    with pytest.raises(RuntimeError, match="injected"):
        export(run_dir, **kwargs)
    assert _snapshot(repo) == before
    monkeypatch.undo()

    old = read_manifest(repo / "m-fp32" / "2").created
    again = export(run_dir, **kwargs, version=2, overwrite=True)
    assert again.version == 2 and list_models(repo) == {"m-fp32": [1, 2]}
    assert read_manifest(repo / "m-fp32" / "2").created >= old
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]


def test_publish_is_all_or_nothing(tmp_path):
    repo = tmp_path / "repo"
    (repo / "a" / "1").mkdir(parents=True)
    (repo / "a" / "1" / "old.txt").write_text("old a")
    built_a, built_b = tmp_path / "built-a", tmp_path / "built-b"
    built_a.mkdir()
    (built_a / "new.txt").write_text("new a")
    # built_b does not exist: the second move fails after the first succeeded.
    moves = {built_a: repo / "a" / "1", built_b: repo / "b" / "1"}
    with pytest.raises(FileNotFoundError):
        repository.publish(moves, overwrite=True)
    assert (repo / "a" / "1" / "old.txt").read_text() == "old a"
    assert not (repo / "a" / "1" / "new.txt").exists()
    assert (built_a / "new.txt").is_file()
    assert not (repo / "b").exists()
    assert sorted(p.name for p in (repo / "a").iterdir()) == ["1"]


def test_next_version_looks_at_every_variant(tmp_path):
    (tmp_path / "m-int8" / "3").mkdir(parents=True)
    (tmp_path / "m-fp32" / "1").mkdir(parents=True)
    assert repository.next_version(tmp_path, "m", ["fp32", "int8"]) == 4
    assert repository.next_version(tmp_path, "other", ["fp32"]) == 1


def test_one_recipe_calibrated_on_a_given_folder(run_dir, tmp_path):
    data_dir = json.loads((run_dir / "config.json").read_text())["data_dir"]
    result = export(
        run_dir,
        repository=tmp_path / "repo",
        name="m",
        calibration_dir=data_dir,  # class sub-folders: any layout is accepted
        calibration_samples=5,
        calibration_method="percentile",
        quantization="u8s8",
        max_accuracy_drop=25.0,
        bench_seconds=0.05,
    )
    q = read_manifest(result.row("int8").path).quantization
    assert (q["name"], q["calibration"], q["calibration_images"]) == ("u8s8", "percentile", 5)
    report = json.loads((result.row("int8").path / "report.json").read_text())["quantization"]
    assert report["mode"] == "u8s8" and len(report["candidates"]) == 1
    assert report["candidates"][0]["latency_p50_ms"] is None
    assert "| n/a |" in (result.row("int8").path / "report.md").read_text()
