"""The one execution-provider policy (tl2edge.serve.providers): availability, options,
verification, the measured `auto` choice and how the choice is reported.

The real OpenVINO run needs an OpenVINO execution provider that lists a device on this CPU;
`test_auto_really_measures_cpu_and_openvino` gets one from its own virtualenv under
.cache/ort-openvino-venv (onnxruntime-openvino, created once; PyPI needed the first time).

Run: .venv/bin/pytest tests/serve/test_providers.py -q
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from models import build_model
from servekit import ServerThread

from tl2edge._proto import grpc_service_pb2 as pb
from tl2edge._proto import grpc_service_pb2_grpc as pb_grpc
from tl2edge.cli import main
from tl2edge.errors import UserError
from tl2edge.manifest import Manifest
from tl2edge.serve import providers as pv
from tl2edge.serve.config import GRAPH_OPTIMIZATIONS
from tl2edge.serve.server import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".cache" / "ort-openvino-venv"
MODEL = "tiny-int8"


def probe(device: str, b1: float, b8: float) -> pv.Probe:
    return pv.Probe(device, batch1_ms=b1, batch=8, batch_ms=b8)


def test_auto_choice_from_injected_timings():
    # Clearly faster at both batch sizes: chosen.
    assert pv.choose([probe("cpu", 30, 240), probe("openvino", 10, 60)]) == "openvino"
    # Clearly slower (an AVX2-only AMD CPU): the CPU EP stays.
    assert pv.choose([probe("cpu", 30, 240), probe("openvino", 45, 300)]) == "cpu"
    # Within 5%: the simpler CPU EP wins the tie; just past 5% the faster one wins.
    assert pv.choose([probe("cpu", 30, 240), probe("openvino", 29, 232)]) == "cpu"
    assert pv.choose([probe("cpu", 30, 240), probe("openvino", 28, 224)]) == "openvino"
    # Faster at batch 1 but much slower per image at batch 8: the combined cost decides.
    assert pv.choose([probe("cpu", 30, 80), probe("openvino", 25, 240)]) == "cpu"
    # A provider whose outputs failed the accuracy gate is never chosen; CPU is last resort.
    fast_but_wrong = [probe("cpu", 30, 240), probe("openvino", 10, 60)]
    assert pv.choose(fast_but_wrong, failed=["openvino"]) == "cpu"
    assert pv.choose(fast_but_wrong, failed=["openvino", "cpu"]) == "cpu"
    # Among accelerators, the simpler one wins a tie too.
    assert pv.choose([probe("cuda", 5, 20), probe("openvino", 5.1, 20.5)]) == "openvino"
    cost = pv.scores([probe("cpu", 30, 240), probe("openvino", 10, 60)])
    assert cost == {"cpu": 3.5, "openvino": 1.0}


def test_option_plumbing_per_provider():
    config = pv.RuntimeConfig(
        device="tensorrt",
        cuda_device_id=1,
        cuda_mem_limit_mb=512,
        cuda_arena_extend_strategy="kSameAsRequested",
        openvino_precision="ACCURACY",
        openvino_streams=2,
        openvino_threads=3,
        openvino_cache_dir="/tmp/ov",
    )
    assert pv.provider_list("tensorrt", config) == [
        (pv.TENSORRT, {"device_id": "1"}),
        (
            pv.CUDA,
            {
                "device_id": "1",
                "arena_extend_strategy": "kSameAsRequested",
                "gpu_mem_limit": str(512 * 1024 * 1024),
            },
        ),
        (pv.CPU, {}),
    ]
    assert pv.provider_list("openvino", config)[0] == (
        pv.OPENVINO,
        {
            "precision": "ACCURACY",
            "num_streams": "2",
            "num_of_threads": "3",
            "cache_dir": "/tmp/ov",
        },
    )
    assert pv.provider_options("openvino", pv.RuntimeConfig()) == {"precision": "FP32"}
    with pytest.raises(UserError, match="OpenVINO precision 'BF16' is not one of"):
        pv.RuntimeConfig(openvino_precision="BF16")
    with pytest.raises(UserError, match="device 'gpu' is not one of"):
        pv.RuntimeConfig(device="gpu")
    # RuntimeConfig (no onnxruntime import) accepts exactly the levels sessions know.
    assert tuple(pv.OPT_LEVELS) == GRAPH_OPTIMIZATIONS


def test_gpu_devices_missing_or_silently_dropped(monkeypatch):
    for device, provider in (("cuda", pv.CUDA), ("tensorrt", pv.TENSORRT)):
        with pytest.raises(pv.DeviceUnavailable) as exc:
            pv.require(device)
        assert provider in str(exc.value) and "onnxruntime-gpu" in str(exc.value)
    # onnxruntime-gpu without working CUDA libraries offers CUDA, then runs on CPU.
    monkeypatch.setattr(pv, "available_providers", lambda: [pv.CUDA, pv.CPU])
    pv.require("cuda")
    assert "cuda" in pv.auto_candidates()
    with pytest.raises(pv.DeviceUnavailable, match="did not get CUDAExecutionProvider"):
        pv.verify("cuda", [pv.CPU], "m.onnx")
    pv.verify("cuda", [pv.CUDA, pv.CPU], "m.onnx")
    monkeypatch.setattr(pv, "available_providers", lambda: [pv.TENSORRT, pv.CUDA, pv.CPU])
    assert "tensorrt" not in pv.auto_candidates()  # only when asked: its engine build is slow


def test_explicit_openvino_when_missing_exits_naming_the_package(tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(build_model())
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)  # not installed
    monkeypatch.setattr(pv, "_plugin_state", {})
    monkeypatch.setattr(pv, "available_providers", lambda: [pv.CPU])
    assert main(["bench", str(model), "--device", "openvino", "--seconds", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "error: --device openvino" in err and "pip install 'tl2edge[openvino]'" in err
    assert "onnxruntime-ep-openvino" in err
    assert "openvino" not in pv.auto_candidates()


def test_openvino_on_this_machine_is_used_or_refused_clearly(tmp_path):
    # With the plugin installed: a CPU device means a session that really has the
    # provider; no device (the plugin lists Intel CPUs only) means a clear refusal.
    model = tmp_path / "m.onnx"
    model.write_bytes(build_model())
    reason = pv.unavailable_reason("openvino")
    if reason:
        with pytest.raises(pv.DeviceUnavailable, match="--device openvino: "):
            pv.open_session(model, "openvino", pv.RuntimeConfig())
        assert "openvino" not in pv.auto_candidates()
    else:
        session = pv.open_session(model, "openvino", pv.RuntimeConfig())
        assert session.get_providers()[0] == pv.OPENVINO


def test_auto_measures_candidates_and_keeps_the_fastest(tmp_path, monkeypatch, caplog):
    # The measuring path with injected timings: two candidates, both run on CPU here.
    model = tmp_path / "m.onnx"
    model.write_bytes(build_model())
    real_open = pv.open_session
    monkeypatch.setattr(pv, "auto_candidates", lambda: ["cpu", "openvino"])
    monkeypatch.setattr(
        pv, "open_session", lambda path, device, config: real_open(path, "cpu", config)
    )
    timings = {"cpu": (30.0, 240.0), "openvino": (10.0, 60.0)}
    seen = []

    def fake_probe(session, device, batch, repeats=3):
        seen.append((device, batch))
        return pv.Probe(device, timings[device][0], batch, timings[device][1])

    monkeypatch.setattr(pv, "probe", fake_probe)
    config = pv.RuntimeConfig(device="auto", probe_max_batch=4)
    with caplog.at_level(logging.INFO, logger="tl2edge.serve.providers"):
        sel = pv.select_session(model, config)
    assert (sel.device, sel.requested) == ("openvino", "auto")
    assert seen == [("cpu", 4), ("openvino", 4)]
    assert "auto chose openvino | cpu: b1 30 ms" in caplog.text
    # The manifest says OpenVINO failed the gate for this variant: not even measured.
    seen.clear()
    failed = pv.gate_failures({pv.OPENVINO: {"passed": False}, pv.CPU: {"passed": True}})
    sel = pv.select_session(model, config, failed=failed)
    assert sel.device == "cpu" and seen == [] and "accuracy gate" in sel.excluded["openvino"]
    # With a cache dir the measurements are kept: the next start opens only the choice.
    cached = pv.RuntimeConfig(device="auto", probe_max_batch=4, auto_cache_dir=str(tmp_path / "c"))
    seen.clear()
    first = pv.select_session(model, cached)
    assert (first.device, first.cached, len(seen)) == ("openvino", False, 2)
    again = pv.select_session(model, cached)
    assert (again.device, again.cached, len(seen)) == ("openvino", True, 2)  # no new probes
    assert again.probes == first.probes
    model.write_bytes(build_model(seed=1))  # another file: measured again
    assert not pv.select_session(model, cached).cached and len(seen) == 4
    # Only CPU available: nothing to measure.
    monkeypatch.setattr(pv, "auto_candidates", lambda: ["cpu"])
    sel = pv.select_session(model, config)
    assert (sel.device, sel.probes) == ("cpu", [])


def test_manifest_providers_field_is_backward_compatible(repo):
    old = json.loads((repo / MODEL / "1" / "manifest.json").read_text())
    old.pop("providers", None)
    assert Manifest.from_dict(old).providers == {}
    new = Manifest.from_dict({**old, "providers": {pv.OPENVINO: {"passed": False}}})
    assert pv.gate_failures(new.providers) == {"openvino": "failed the accuracy gate at export"}
    assert Manifest.from_dict(new.to_dict()) == new


def test_server_reports_the_device_in_config_and_metrics(repo):
    with ServerThread(repo, config=ServeConfig(metrics_port=0)) as s:
        with grpc.insecure_channel(s.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            config = stub.ModelConfig(pb.ModelConfigRequest(name=MODEL)).config
        with urllib.request.urlopen(f"http://127.0.0.1:{s.server.metrics_port}/metrics") as r:
            text = r.read().decode()
    assert config.parameters["device"].string_value == "cpu"
    assert config.parameters["device_requested"].string_value == "auto"
    selection = json.loads(config.parameters["device_selection"].string_value)
    assert selection["providers"][0] == pv.CPU
    assert (
        'tl2edge_model_device{device="cpu",model="tiny-int8",requested="auto",version="1"} 1.0'
        in text
    )


def _openvino_python() -> Path:
    python = VENV / "bin" / "python"
    check = [python, "-c", "import onnxruntime as o, tl2edge.serve.providers; "
             "assert 'OpenVINOExecutionProvider' in o.get_available_providers()"]  # fmt: skip
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    for args in (["onnxruntime-openvino", "numpy"], ["--no-deps", "-e", str(ROOT)]):
        install = subprocess.run(
            [python, "-m", "pip", "install", "--quiet", *args],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if install.returncode != 0:
            pytest.skip(f"cannot install onnxruntime-openvino (offline?): {install.stderr[-300:]}")
    return python


@pytest.mark.slow
def test_auto_really_measures_cpu_and_openvino(tmp_path):
    # One real run: an onnxruntime with the OpenVINO provider (onnxruntime-openvino, which
    # also lists non-Intel CPUs), a tiny model, `--device openvino` and `--device auto`.
    python = _openvino_python()
    model = tmp_path / "m.onnx"
    model.write_bytes(build_model(work=2))
    script = f"""
import json
from tl2edge.serve import providers as pv
config = pv.RuntimeConfig(device="openvino", openvino_cache_dir={str(tmp_path / "ov")!r})
explicit = pv.select_session({str(model)!r}, config)
auto = pv.select_session({str(model)!r}, pv.RuntimeConfig(device="auto", probe_max_batch=4))
print(json.dumps({{"explicit": explicit.providers, "options": explicit.options,
                  "auto": auto.to_dict()}}))
"""
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["explicit"][0] == pv.OPENVINO
    assert out["options"]["precision"] == "FP32"  # the precision that ran is reported
    measured = [p["device"] for p in out["auto"]["probes"]]
    assert measured == ["cpu", "openvino"]
    probes = [pv.Probe(**p) for p in out["auto"]["probes"]]
    assert out["auto"]["device"] == pv.choose(probes)
    assert out["auto"]["providers"][0] == pv.PROVIDER[out["auto"]["device"]]
    assert any((tmp_path / "ov").iterdir())  # the compiled-model cache was written
