"""The protocol contracts: stubs up to date, the official tritonclient works unchanged,
server reflection lists the services.

tritonclient pins an older protobuf than tl2edge's stubs need, so it runs from its own
virtualenv, created once under .cache/tritonclient-venv (PyPI needed the first time).

Run: .venv/bin/pytest tests/serve/test_protocols.py -q
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from models import LABELS, reference
from servekit import random_pixels

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".cache" / "tritonclient-venv"


def test_generated_stubs_are_up_to_date():
    pytest.importorskip("grpc_tools")
    import importlib.util

    spec = importlib.util.spec_from_file_location("protogen", ROOT / "scripts" / "protogen.py")
    protogen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(protogen)
    stale = protogen.stale_files()
    assert not stale, f"run `make protos`: {stale} differ from protos/"


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_as_v1_and_v1alpha(server, version):
    from grpc_reflection.v1alpha import reflection_pb2  # v1 has the same messages

    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="inference.GRPCInferenceService"
            ),
        ]
        listed, described = list(call(iter(requests), timeout=20))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "inference.GRPCInferenceService",
        "tl2edge.v1.Classifier",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    files = described.file_descriptor_response.file_descriptor_proto
    assert files and any(b"RepositoryModelLoad" in f for f in files)


def _triton_python() -> Path:
    python = VENV / "bin" / "python"
    if (
        python.exists()
        and subprocess.run(
            [python, "-c", "import tritonclient.grpc"], capture_output=True
        ).returncode
        == 0
    ):
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "tritonclient[grpc]", "numpy"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        pytest.skip(f"cannot install tritonclient (offline?): {install.stderr[-300:]}")
    return python


@pytest.mark.slow
def test_official_tritonclient_against_the_server(server, repo, tmp_path):
    from google.protobuf import descriptor_pb2

    from tl2edge._proto import grpc_service_pb2, model_config_pb2

    python = _triton_python()
    pixels = random_pixels(3, seed=42)
    np.save(tmp_path / "pixels.npy", pixels)
    files = descriptor_pb2.FileDescriptorSet()
    for module in (grpc_service_pb2, model_config_pb2):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    (tmp_path / "ours.bin").write_bytes(files.SerializeToString())
    run = subprocess.run(
        [
            python,
            str(Path(__file__).parent / "triton_script.py"),
            server.address,
            "tiny-int8",
            str(tmp_path / "pixels.npy"),
            str(tmp_path / "ours.bin"),
            "tiny",  # the plain export name of tiny-int8
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["mismatches"] == [] and out["fields_checked"] > 80
    assert out["model_metadata"]["inputs"][0] == {
        "name": "image",
        "datatype": "UINT8",
        "shape": ["-1", "8", "8", "3"],
    }
    assert out["model_config"]["config"]["max_batch_size"] == 8
    expected = reference(repo / "tiny-int8" / "1", pixels)
    np.testing.assert_allclose(np.array(out["probs"], np.float32), expected, rtol=1e-6)
    for row, probs in zip(out["classification"], expected, strict=True):
        best = np.argsort(-probs)[:2]
        assert [r.split(":")[1:] for r in row] == [[str(i), LABELS[i]] for i in best]
        assert float(row[0].split(":")[0]) == pytest.approx(probs[best[0]], abs=1e-5)
    assert out["statistics"]["model_stats"][0]["inference_count"] == "6"
    plain = out["plain"]
    assert plain["model_ready"] and plain["model_metadata"]["name"] == "tiny-int8"
    params = plain["model_config"]["config"]["parameters"]
    assert params["resolved_from"]["string_value"] == "tiny"
    assert params["variant"]["string_value"] == "int8"
    np.testing.assert_allclose(np.array(plain["probs"], np.float32), expected, rtol=1e-6)


def test_servicers_reach_models_only_through_the_data_plane():
    import tl2edge.serve.classifier as classifier
    import tl2edge.serve.kserve as kserve

    for module in (kserve, classifier):
        source = Path(module.__file__).read_text()
        assert not re.search(r"plane\.repository\b", source), module.__name__
        assert "serve.repository import" not in source, module.__name__
