"""The demo, shrunk (few images, one epoch per phase), end to end through a real server.

Run: .venv/bin/pytest tests/test_demo.py -q
"""

from __future__ import annotations

import subprocess
import sys

from tl2edge.manifest import read_manifest
from tl2edge.resources import SOURCE_BACKBONE, asset


def test_demo_runs_the_whole_pipeline(tmp_path):
    assert asset(SOURCE_BACKBONE).is_file(), "the shipped backbone is missing: make source-backbone"
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tl2edge",
            "demo",
            "--out",
            str(out),
            "--per-class",
            "8",
            "--epochs-head",
            "1",
            "--epochs-finetune",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "VGG16 from the shipped source backbone" in text and "transfer gain" in text
    assert "| int8 | shapes-int8/1 |" in text and "int8 on the held-out test set" in text
    assert (out / "evaluation-int8" / "confusion.png").is_file()
    assert "'shapes' resolves to shapes-int8" in text
    assert "KServe v2 ModelInfer" in text and "server stopped with exit code 0" in text
    for run in ("transfer", "transfer/baseline-scratch"):
        assert (out / "runs" / run / "model.keras").is_file()
    assert "Transfer gain" in (out / "runs" / "transfer" / "report.md").read_text()
    manifest = read_manifest(out / "models" / "shapes-int8" / "1")
    assert manifest.variant == "int8" and len(manifest.labels) == 5
