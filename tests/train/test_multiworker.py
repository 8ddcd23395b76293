"""Two local CPU workers train one run under MultiWorkerMirroredStrategy, then it exports.

Run: .venv/bin/pytest tests/train/test_multiworker.py -q

The workers are separate processes with TF_CONFIG on loopback ports, given the same --out:
only the chief writes it; worker 1 writes to a temp dir of its own and removes it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tl2edge.train.cluster import role, run_dir_for


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_roles_from_tf_config(tmp_path):
    cluster = {"worker": ["a:1", "b:2"]}

    def env(kind, i, c=cluster):
        return {"TF_CONFIG": json.dumps({"cluster": c, "task": {"type": kind, "index": i}})}

    assert role({}) is None and run_dir_for(tmp_path / "r", {}) == tmp_path / "r"
    assert role(env("worker", 0)).is_chief and not role(env("worker", 1)).is_chief
    other = run_dir_for(tmp_path / "r", env("worker", 1))
    assert other != tmp_path / "r" and other.is_dir() and not (tmp_path / "r").exists()
    with_chief = {"chief": ["c:0"], "worker": ["a:1"]}
    assert role(env("chief", 0, with_chief)).is_chief
    assert not role(env("worker", 0, with_chief)).is_chief
    from tl2edge.errors import UserError

    with pytest.raises(UserError, match="not in its cluster"):
        role(env("worker", 2))
    with pytest.raises(UserError, match="TF_CONFIG is not valid"):
        role({"TF_CONFIG": "{oops"})


@pytest.mark.timeout(1200)
def test_two_workers_train_one_run_that_exports(tiny_data, tmp_path):
    ports = _free_ports(2)
    workers = [f"127.0.0.1:{p}" for p in ports]
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "tl2edge",
        "train",
        str(tiny_data),
        "--out",
        str(out),
        "--image-size",
        "32",
        "--weights",
        "none",
        "--epochs-head",
        "1",
        "--epochs-finetune",
        "0",
        "--batch-size",
        "8",
        "--dense-units",
        "16",
        "--seed",
        "1",
        "--no-tensorboard",
    ]
    procs = []
    for index in range(2):
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            ),
        )
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    try:
        logs = [p.communicate(timeout=1100)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(t[-3000:] for t in logs)
    assert "worker 1 done; the chief's run dir is the result" in logs[1]
    run = json.loads((out / "run.json").read_text())
    device = run["device"]
    # MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy
    assert device["strategy"] == "CollectiveAllReduceStrategy" and device["replicas"] == 2
    assert device["workers"]["chief"] and device["workers"]["task"] == "worker/0"
    assert device["workers"]["cluster"] == [f"worker/{i}={w}" for i, w in enumerate(workers)]
    assert json.loads((out / "state.json").read_text())["status"] == "complete"

    from tl2edge.export.api import export
    from tl2edge.manifest import read_manifest

    result = export(out, repository=tmp_path / "repo", name="mw", variants=("fp32",))
    manifest = read_manifest(result.row("fp32").path)
    assert manifest.variant == "fp32" and len(manifest.labels) == 3
