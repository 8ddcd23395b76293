"""TensorFlow's C++ start-up lines stay out of the terminal unless --log-level DEBUG.
Run: .venv/bin/pytest tests/core/test_quiet_tensorflow.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tl2edge.logs import is_native_noise

NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796013873.535222   15566 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "I0000 00:00:1796013874.419329   15566 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",
    "E0000 00:00:1796013936.262240   15566 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "2026-11-30 04:50:01.123456: I tensorflow/core/util/port.cc:153] oneDNN custom operations "
    "are on. You may see slightly different numerical results",
)


def test_noise_patterns_match_only_native_startup_lines():
    assert all(is_native_noise(line) for line in NOISE)
    kept = (
        "04:50:01 INFO tl2edge.train: data: 3 classes",
        "error: --weights x.npz: no such file or run dir (or use imagenet | none)",
        "E0000 00:00:1.0 1 some_op.cc:1] a real kernel failure",
        "decoding images:  40%|####      | 4/10",
    )
    assert not any(is_native_noise(line) for line in kept)


def test_filter_drops_noise_written_to_the_descriptor_and_keeps_the_rest():
    script = (
        "import os, sys\n"
        "from tl2edge.logs import filter_native_stderr\n"
        "with filter_native_stderr():\n"
        f"    os.write(2, {(NOISE[0] + chr(10) + NOISE[1] + chr(10)).encode()!r})\n"
        "    os.write(2, b'progress 1/2\\r')\n"
        "    print('kept line', file=sys.stderr)\n"
        f"    os.write(2, {(NOISE[4] + chr(10)).encode()!r})\n"
        "print('after', file=sys.stderr)\n"
    )
    err = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60).stderr
    assert err == b"progress 1/2\rkept line\nafter\n"


@pytest.mark.slow
def test_train_that_loads_tensorflow_shows_no_native_noise(tmp_path):
    """A real `tl2edge train` that imports TensorFlow and fails on a missing weights file."""
    from tl2edge.synth import write_dataset

    data = write_dataset(
        tmp_path / "data", task="target", per_class=3, size=32, classes=2, seed=0, progress=False
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    base = [sys.executable, "-m", "tl2edge", "train", str(data), "--image-size", "32"]
    base += ["--weights", str(tmp_path / "missing.npz"), "--no-tensorboard"]

    def run(*extra: str) -> subprocess.CompletedProcess:
        out = str(tmp_path / f"run{len(extra)}")
        cmd = [*base, "--out", out, *extra]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)

    quiet = run()
    assert quiet.returncode == 2, quiet.stderr
    assert "error: --weights" in quiet.stderr and "no such file" in quiet.stderr
    assert "tl2edge.train: data:" in quiet.stderr  # tl2edge's own lines pass
    assert not [line for line in quiet.stderr.splitlines() if is_native_noise(line)]
    debug = run("--log-level", "DEBUG")
    assert debug.returncode == 2
    assert [line for line in debug.stderr.splitlines() if is_native_noise(line)], debug.stderr
