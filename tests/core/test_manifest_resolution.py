"""Model resolution (tl2edge.manifest): a file, a version folder, a model folder.
Run: .venv/bin/pytest tests/core/test_manifest_resolution.py -q
"""

from __future__ import annotations

import json

import pytest

from tl2edge import manifest as mf
from tl2edge.errors import UserError


def _manifest(version: int, model_file: str = mf.MODEL_FILE) -> mf.Manifest:
    return mf.Manifest(
        name="m",
        version=version,
        variant="fp32",
        labels=["a", "b"],
        input=mf.TensorSpec(mf.INPUT_NAME, "UINT8", [-1, 32, 32, 3]),
        output=mf.TensorSpec(mf.OUTPUT_NAME, "FP32", [-1, 2]),
        sha256="0" * 64,
        model_file=model_file,
    )


def _version(repo, version: int, model_file: str = mf.MODEL_FILE):
    folder = repo / "m" / str(version)
    folder.mkdir(parents=True)
    (folder / model_file).write_bytes(b"onnx")
    (folder / mf.MANIFEST).write_text(_manifest(version, model_file).to_json())
    return folder


def test_resolve_a_file_a_version_and_a_model_folder(tmp_path):
    _version(tmp_path, 1)
    v10 = _version(tmp_path, 10, "other.onnx")
    assert mf.resolve_model(v10 / "other.onnx") == v10 / "other.onnx"
    assert mf.resolve_model(v10) == v10 / "other.onnx"
    assert mf.resolve_model(tmp_path / "m") == v10 / "other.onnx"  # highest, numerically
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(UserError, match=r"not a \.onnx file"):
        mf.resolve_model(tmp_path / "x.txt")
    with pytest.raises(UserError, match="does not exist"):
        mf.resolve_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no model\.onnx and no version folders"):
        mf.resolve_model(tmp_path / "empty")


def test_manifest_of_prefers_the_file_beside_then_the_embedded_one(tmp_path):
    v1 = _version(tmp_path, 1)
    embedded = {mf.METADATA_KEY: _manifest(7).to_json()}
    assert mf.manifest_of(v1 / mf.MODEL_FILE, embedded).version == 1
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(b"onnx")
    assert mf.manifest_of(lone, embedded).version == 7
    assert mf.manifest_of(lone, {}) is None
    with pytest.raises(UserError, match="embedded manifest is invalid"):
        mf.manifest_of(lone, {mf.METADATA_KEY: json.dumps({"format": "x"})})
