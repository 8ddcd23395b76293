"""Offline checks of deploy/train: the multi-worker training Job and its headless Service.

    .venv/bin/pytest tests/deploy/test_train_job.py -q

Schemas with `kubernetes-validate` (strict); the worker script is run with sh to check the
TF_CONFIG it builds (every index gets the same cluster, its own task, pod names the headless
Service resolves); the `tl2edge train` arguments parse with the real parser.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is in the dev extra")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")

JOB = Path(__file__).resolve().parents[2] / "deploy" / "train" / "multiworker-job.yaml"
DOCS = [d for d in yaml.safe_load_all(JOB.read_text()) if d]


@pytest.mark.parametrize("version", ("1.30.0", "1.33.0"))
@pytest.mark.parametrize("doc", DOCS, ids=[d["kind"] for d in DOCS])
def test_schema(doc, version):
    kv.validate(doc, version, strict=True)


def test_workers_build_one_cluster_that_the_service_resolves(tmp_path):
    (svc,) = [d for d in DOCS if d["kind"] == "Service"]
    (job,) = [d for d in DOCS if d["kind"] == "Job"]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    workers = int(env["WORKERS"])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == workers
    assert pod["subdomain"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    port = container["ports"][0]["containerPort"]
    assert svc["spec"]["ports"][0]["port"] == port
    script = container["args"][0].replace("exec tl2edge train", "echo")
    script += '\nprintf "%s" "$TF_CONFIG" > "$OUT"\n'
    configs = []
    for index in range(workers):
        out = tmp_path / f"tf{index}.json"
        subprocess.run(
            ["sh", "-c", script],
            env={**os.environ, **env, "JOB_COMPLETION_INDEX": str(index), "OUT": str(out)},
            check=True,
            capture_output=True,
        )
        configs.append(json.loads(out.read_text()))
    name, svc_name = job["metadata"]["name"], svc["metadata"]["name"]
    expected = [f"{name}-{i}.{svc_name}:{port}" for i in range(workers)]
    for index, cfg in enumerate(configs):
        assert cfg == {"cluster": {"worker": expected}, "task": {"type": "worker", "index": index}}
    from tl2edge.cli import build_parser

    line = next(s for s in container["args"][0].splitlines() if "tl2edge train" in s)
    args = build_parser("train").parse_args(shlex.split(line.split("exec ", 1)[1])[1:])
    mount = container["volumeMounts"][0]["mountPath"]
    assert args.data_dir.startswith(mount) and args.out.startswith(mount)
