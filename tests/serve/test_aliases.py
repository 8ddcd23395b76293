"""One name per export: `mine` answers as the best variant of mine-fp32 / mine-int8 / mine-fp16.
Run: .venv/bin/pytest tests/serve/test_aliases.py -q

The ranking is tested with injected latencies and providers (CUDA cannot run here); the
server tests load real tiny models on the CPU provider.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from models import reference, write_version
from servekit import ServerThread, random_pixels

from tl2edge import manifest as mf
from tl2edge.serve.aliases import Candidate, rank, resolve_aliases
from tl2edge.serve.errors import ModelNotFound
from tl2edge.serve.repository import ModelRepository

CPU, CUDA, OV = "CPUExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider"
FAILED = {"accuracy_gate": {"passed": False, "drop_points": 7.5, "max_accuracy_drop": 1.0}}


def _cand(variant, provider=CPU, latency=None, passed=True):
    return Candidate(f"m-{variant}", 1, variant, provider, latency, passed)


def _served(name, variant, provider=CPU, latency=None, metrics=None, version=1):
    manifest = mf.Manifest(
        name=name,
        version=version,
        variant=variant,
        labels=["a", "b"],
        input=mf.TensorSpec("image", "UINT8", [-1, 8, 8, 3]),
        output=mf.TensorSpec("probs", "FP32", [-1, 2]),
        sha256="",
        metrics=metrics or {},
    )
    return SimpleNamespace(manifest=manifest, measured_latency_ms=latency, provider=provider)


def test_preference_order_without_measurements():
    variants = ("fp32", "fp16", "int8")
    for provider in (CPU, OV):
        assert [c.variant for c in rank(_cand(v, provider) for v in variants)] == [
            "int8",
            "fp32",
            "fp16",
        ]
    assert [c.variant for c in rank(_cand(v, CUDA) for v in variants)] == ["fp16", "int8", "fp32"]


def test_measured_latencies_decide_and_failed_gates_never_win():
    measured = [_cand("int8", latency=9.0), _cand("fp32", latency=4.0), _cand("fp16", latency=6.0)]
    assert [c.variant for c in rank(measured)] == ["fp32", "fp16", "int8"]
    measured[1] = _cand("fp32", latency=4.0, passed=False)
    assert [c.variant for c in rank(measured)] == ["fp16", "int8"]
    # One candidate without a measurement: latencies are not comparable, the order decides.
    partly = [_cand("int8"), _cand("fp32", latency=1.0)]
    assert rank(partly)[0].variant == "int8"
    assert rank([_cand("int8", passed=False)]) == []


def test_resolve_aliases_groups_variants_and_reports_why():
    models = {
        "mine-fp32": {1: _served("mine-fp32", "fp32")},
        "mine-int8": {
            1: _served("mine-int8", "int8"),
            2: _served("mine-int8", "int8", metrics=FAILED, version=2),  # newest one counts
        },
        "other-fp16": {1: _served("other-fp16", "fp16", CUDA)},
        "plain": {1: _served("plain", "fp32")},  # not `<name>-<variant>`: no alias
        "taken-int8": {1: _served("taken-int8", "int8")},
        "taken": {1: _served("taken", "fp32")},  # a real model keeps its name
    }
    aliases = resolve_aliases(models)
    assert set(aliases) == {"mine", "other"}
    assert aliases["mine"].target == "mine-fp32"
    assert "drop_points 7.5" in str(aliases["mine"].candidates[1])
    assert aliases["other"].target == "other-fp16" and "CUDA" in aliases["other"].reason
    models["mine-fp32"] = {1: _served("mine-fp32", "fp32", metrics=FAILED)}
    assert resolve_aliases(models)["mine"].target is None


def test_per_provider_gate_record_overrides_the_export_gate():
    metrics = {
        "accuracy_gate": {"passed": True},
        "providers": {OV: {"passed": False, "agreement": 0.9}},
    }
    m = _served("x-int8", "int8", metrics=metrics).manifest
    assert m.passed_gate(CPU) and not m.passed_gate(OV)
    models = {
        "x-int8": {1: _served("x-int8", "int8", OV, metrics=metrics)},
        "x-fp32": {1: _served("x-fp32", "fp32", OV)},
    }
    assert resolve_aliases(models)["x"].target == "x-fp32"


def test_server_answers_to_the_plain_name_on_every_api(tmp_path):
    from tl2edge._proto import grpc_service_pb2 as pb
    from tl2edge._proto import grpc_service_pb2_grpc as pb_grpc
    from tl2edge.client import Client

    repo = tmp_path / "repo"
    write_version(repo, "mine-fp32", 1, seed=1)
    int8 = write_version(repo, "mine-int8", 1, seed=2)
    pixels = random_pixels(2, seed=5)
    with ServerThread(repo) as s, Client(s.address) as c:
        probs = c.infer("mine", pixels)
        np.testing.assert_allclose(probs, reference(int8, pixels), rtol=1e-6)
        assert c.classify([pixels[0]], model="mine")[0]
        infos = {m.name: m for m in c.models()}
        assert infos["mine"].resolves_to == "mine-int8" and infos["mine"].variant == "int8"
        assert infos["mine-int8"].resolves_to == "" and infos["mine-fp32"].resolves_to == ""
        assert c.health("mine") == "SERVING"
        assert infos["mine"].is_default  # one export, nothing else: its plain name
        assert c.classify([pixels[0]]) == c.classify([pixels[0]], model="mine-int8")
        with grpc.insecure_channel(s.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="mine"))
            assert meta.name == "mine-int8" and list(meta.versions) == ["1"]
            params = stub.ModelConfig(pb.ModelConfigRequest(name="mine")).config.parameters
            assert params["resolved_from"].string_value == "mine"
            assert "int8" in params["resolution"].string_value
            direct = stub.ModelConfig(pb.ModelConfigRequest(name="mine-int8")).config.parameters
            assert direct["aliases"].string_value == "mine" and "resolved_from" not in direct
            fp32 = stub.ModelConfig(pb.ModelConfigRequest(name="mine-fp32")).config.parameters
            assert fp32["aliases"].string_value == ""
            stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mine")).model_stats
            assert [(m.name, m.inference_count) for m in stats] == [
                ("mine-int8", 5)
            ]  # 2+1+1+1 images


def test_plain_name_is_not_found_when_no_variant_passed(tmp_path):
    repo = tmp_path / "repo"
    write_version(repo, "bad-fp32", 1, metrics=FAILED)
    write_version(repo, "bad-int8", 1, metrics=FAILED)
    with ServerThread(repo) as s:
        from tl2edge.client import Client

        with Client(s.address) as c:
            with pytest.raises(grpc.RpcError) as exc:
                c.infer("bad", random_pixels(1))
            assert exc.value.code() == grpc.StatusCode.NOT_FOUND
            details = exc.value.details()
            assert "'bad' has no variant to serve" in details
            assert "bad-int8 v1" in details and "failed its accuracy gate" in details
            assert "ask for a variant by its full name" in details
            assert c.infer("bad-int8", random_pixels(1)).shape == (1, 3)  # still served by name
            assert "bad" not in {m.name for m in c.models()}


def test_hot_reload_re_ranks_the_plain_name(tmp_path):
    repo = tmp_path / "repo"
    write_version(repo, "mine-fp32", 1, seed=1)

    async def scenario() -> list[str | None]:
        r = ModelRepository(repo)
        seen = []
        await r.load_all()
        seen.append(r.get("mine").name)
        write_version(repo, "mine-int8", 1, seed=2)
        await r.refresh()
        seen.append(r.get("mine").name)
        write_version(repo, "mine-int8", 2, seed=3, metrics=FAILED)
        await r.refresh()
        seen.append(r.get("mine").name)
        # A runtime measurement of every variant decides over the preference order.
        write_version(repo, "mine-int8", 3, seed=4)
        await r.refresh()
        r.models["mine-fp32"][1].measured_latency_ms = 2.0
        r.models["mine-int8"][3].measured_latency_ms = 5.0
        r.update_aliases()
        seen.append(r.get("mine", 1).name)
        import shutil

        shutil.rmtree(repo / "mine-fp32")
        await r.refresh()
        seen.append(r.get("mine").name)
        shutil.rmtree(repo / "mine-int8")
        await r.refresh()
        seen.append(r.aliases.get("mine"))
        with pytest.raises(ModelNotFound):
            r.get("mine")
        await r.close()
        return seen

    assert asyncio.run(scenario()) == [
        "mine-fp32",
        "mine-int8",
        "mine-fp32",
        "mine-fp32",
        "mine-int8",
        None,
    ]
