"""Triton's model control: RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload and
--model-control-mode none|poll|explicit, with our stubs and with the official tritonclient.

Run: .venv/bin/pytest tests/serve/test_model_control.py -q
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest
from models import write_version
from servekit import ServerThread, random_pixels

from tl2edge._proto import grpc_service_pb2 as pb
from tl2edge._proto import grpc_service_pb2_grpc as pb_grpc
from tl2edge.client import Client
from tl2edge.errors import UserError
from tl2edge.serve.server import ServeConfig

EXPLICIT = ServeConfig(model_control_mode="explicit", load_models=("tiny-int8",))


@pytest.fixture
def two_models(repo: Path) -> Path:
    write_version(repo, "other-fp32", 1, seed=1)
    write_version(repo, "other-fp32", 2, seed=2)
    return repo


def _index(stub, ready: bool = False) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    reply = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready), timeout=20)
    return [(m.name, m.version, m.state) for m in reply.models]


def test_explicit_mode_loads_and_unloads_on_request(two_models):
    with (
        ServerThread(two_models, config=EXPLICIT) as s,
        grpc.insecure_channel(s.address) as channel,
        Client(s.address, timeout=20) as client,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert _index(stub) == [("other-fp32", "", "UNAVAILABLE"), ("tiny-int8", "1", "READY")]
        assert _index(stub, ready=True) == [("tiny-int8", "1", "READY")]
        with pytest.raises(grpc.RpcError) as exc:
            client.infer("other-fp32", random_pixels(1))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND

        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="other-fp32"))
        assert ("other-fp32", "2", "READY") in _index(stub)  # the version policy: latest
        assert client.infer("other-fp32", random_pixels(1)).shape == (1, 3)
        assert client.health("other-fp32") == "SERVING"

        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny-int8"))
        assert ("tiny-int8", "", "UNAVAILABLE") in _index(stub)
        assert client.health("tiny-int8") == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as exc:
            client.infer("tiny-int8", random_pixels(1))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        metrics = s.server.plane.metrics.registry
        assert metrics.get_sample_value(
            "tl2edge_model_loaded",
            {"model": "other-fp32", "version": "2", "variant": "fp32",
             "providers": "CPUExecutionProvider"},
        ) == 1  # fmt: skip
        assert metrics.get_sample_value(
            "tl2edge_model_loaded",
            {"model": "tiny-int8", "version": "1", "variant": "int8",
             "providers": "CPUExecutionProvider"},
        ) is None  # fmt: skip

        with pytest.raises(grpc.RpcError) as exc:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope"))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in exc.value.details()
        request = pb.RepositoryModelLoadRequest(model_name="tiny-int8")
        request.parameters["config"].string_param = "{}"
        with pytest.raises(grpc.RpcError) as exc:
            stub.RepositoryModelLoad(request)
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_model_that_fails_to_load_keeps_serving_its_old_version(repo):
    with (
        ServerThread(repo, config=ServeConfig(model_control_mode="explicit")) as s,
        grpc.insecure_channel(s.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        write_version(repo, "broken-fp32", 1, corrupt=True)
        with pytest.raises(grpc.RpcError) as exc:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="broken-fp32"))
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "broken-fp32" in exc.value.details() and "sha256" in exc.value.details()
        reply = stub.RepositoryIndex(pb.RepositoryIndexRequest())
        broken = next(m for m in reply.models if m.name == "broken-fp32")
        assert broken.state == "UNAVAILABLE" and "sha256" in broken.reason
        # A new version of a served model that fails: the old one keeps answering.
        write_version(repo, "tiny-int8", 2, corrupt=True)
        with pytest.raises(grpc.RpcError):
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny-int8"))
        assert _index(stub, ready=True) == [("tiny-int8", "1", "READY")]
        with Client(s.address, timeout=20) as client:
            assert client.infer("tiny-int8", random_pixels(1)).shape == (1, 3)


def test_other_modes_refuse_load_and_unload_but_answer_the_index(repo):
    with ServerThread(repo) as s, grpc.insecure_channel(s.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert s.server.config.model_control_mode == "none"
        assert _index(stub) == [("tiny-int8", "1", "READY")]
        for call in (
            lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny-int8")),
            lambda: stub.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name="tiny-int8")
            ),
        ):
            with pytest.raises(grpc.RpcError) as exc:
                call()
            assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--model-control-mode explicit" in exc.value.details()


def test_mode_flags_are_checked():
    assert ServeConfig(reload_interval_s=5).model_control_mode == "poll"
    assert ServeConfig().model_control_mode == "none"
    with pytest.raises(UserError, match="needs --reload-interval-s"):
        ServeConfig(model_control_mode="poll")
    with pytest.raises(UserError, match="goes with --model-control-mode poll"):
        ServeConfig(model_control_mode="explicit", reload_interval_s=5)
    with pytest.raises(UserError, match="--load-model needs"):
        ServeConfig(load_models=("a",))


def test_load_model_of_an_unknown_name_stops_start_up(repo):
    config = ServeConfig(model_control_mode="explicit", load_models=("nope",))
    with pytest.raises(UserError, match=r"--load-model nope: not in .*models there: tiny-int8"):
        ServerThread(repo, config=config, start=False)


@pytest.mark.slow
def test_official_tritonclient_model_control(two_models):
    from test_protocols import _triton_python

    python = _triton_python()
    with ServerThread(two_models, config=EXPLICIT) as s:
        run = subprocess.run(
            [
                python,
                str(Path(__file__).parent / "triton_control_script.py"),
                s.address,
                "tiny-int8",
                "other-fp32",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    states = {m["name"]: m.get("state") for m in out["index_before"]["models"]}
    assert states == {"tiny-int8": "READY", "other-fp32": "UNAVAILABLE"}
    assert out["other_ready_after_load"] is True
    assert {m["name"]: m.get("version") for m in out["index_loaded"]["models"]} == {
        "tiny-int8": "1",
        "other-fp32": "2",
    }
    assert out["loaded_ready_after_unload"] is False
    after = {m["name"]: m.get("state") for m in out["index_after"]["models"]}
    assert after == {"tiny-int8": "UNAVAILABLE", "other-fp32": "READY"}
    assert out["missing"][0] == "StatusCode.NOT_FOUND"
