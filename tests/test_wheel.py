"""The wheel works outside the checkout: build it, install it with the `serve` extra only
into a fresh venv in a temporary folder, then run the CLI, load the packaged backbone and
classify an image through a real server.

The dependencies' wheels are kept in .cache/wheelhouse-<hash> (downloaded once), so later
runs install offline. Run: .venv/bin/pytest tests/test_wheel.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "serve"))

from models import LABELS, reference, write_version  # noqa: E402

pytestmark = pytest.mark.slow


def _pip(*args: str, python: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    cmd += ["--python", str(python)] if python else []
    subprocess.run([*cmd, *args], check=True, timeout=900)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv (outside the checkout) with the built wheel and the `serve` extra."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    _pip("wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(dist))
    wheel = next(dist.glob("tl2edge-*.whl"))
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    wheelhouse = ROOT / ".cache" / f"wheelhouse-{key}"
    if not (wheelhouse / ".complete").is_file():
        _pip("download", "--only-binary", ":all:", "-d", str(wheelhouse), f"{wheel}[serve]")
        (wheelhouse / ".complete").touch()
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    _pip("install", "--no-index", "--find-links", str(wheelhouse), f"{wheel}[serve]", python=python)
    return env


def _run(env: Path, *args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(env / "bin" / args[0]), *args[1:]],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def test_cli_and_packaged_backbone(venv, tmp_path):
    assert _run(venv, "tl2edge", "--help", cwd=tmp_path).returncode == 0
    serve_help = _run(venv, "tl2edge", "serve", "--help", cwd=tmp_path)
    assert serve_help.returncode == 0 and "--repository" in serve_help.stdout
    no_tf = _run(venv, "python", "-c", "import tensorflow", cwd=tmp_path)
    assert no_tf.returncode != 0 and "No module named 'tensorflow'" in no_tf.stderr
    dev_tool = _run(venv, "python", "-c", "import tl2edge.serve.protogen", cwd=tmp_path)
    assert "No module named 'tl2edge.serve.protogen'" in dev_tool.stderr  # stays in scripts/
    script = (
        "import json, numpy as np, tl2edge\n"
        "from tl2edge.resources import SOURCE_BACKBONE, asset_path\n"
        "with asset_path(SOURCE_BACKBONE) as p, np.load(p) as a:\n"
        "    print(json.dumps({'path': str(p), 'pkg': tl2edge.__file__, 'keys': sorted(a.files)}))\n"
    )
    found = _run(venv, "python", "-c", script, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    info = json.loads(found.stdout)
    assert str(venv) in info["path"] and str(venv) in info["pkg"]  # the installed copy
    assert not info["pkg"].startswith(str(ROOT))
    assert "block1_conv1/0" in info["keys"] and "block5_conv3/1" in info["keys"]


def test_serve_and_predict_round_trip(venv, tmp_path):
    repo = tmp_path / "repo"
    version = write_version(repo, "tiny-int8", 1)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "img.png")
    expected = LABELS[int(reference(version, pixels[None])[0].argmax())]
    port = _free_port()
    server = subprocess.Popen(
        [str(venv / "bin" / "tl2edge"), "serve", "--repository", str(repo), "--host", "127.0.0.1",
         "--port", str(port), "--metrics-port", "-1", "--log-level", "WARNING"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while _run(venv, "tl2edge", "health", "--server", address, cwd=tmp_path).returncode:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "the server never reported SERVING"
            time.sleep(0.5)
        got = _run(
            venv, "tl2edge", "predict", "img.png", "--server", address, "--json", cwd=tmp_path
        )
        assert got.returncode == 0, got.stderr
        top = json.loads(got.stdout)[0]["predictions"][0]
        assert top["label"] == expected
    finally:
        server.terminate()
        server.wait(timeout=60)
