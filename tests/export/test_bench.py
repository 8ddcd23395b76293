"""`tl2edge bench` on CPU, and the execution-provider policy shared with the server.
Run: .venv/bin/pytest tests/export -q
"""

from __future__ import annotations

import json
import logging

import onnxruntime as ort
import pytest

from tl2edge.cli import main
from tl2edge.errors import UserError
from tl2edge.export.bench import CPU, CUDA, TENSORRT, check_providers, measure, plan_providers


def test_bench_a_repository_entry_on_cpu(exported, tmp_path, capsys):
    out = tmp_path / "bench.json"
    entry = exported.repository / "shapes-int8"  # highest version is picked
    code = main(
        ["bench", str(entry), "--batch-sizes", "1,4", "--seconds", "0.1", "--warmup", "1",
         "--threads", "1", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "providers=CPUExecutionProvider" in text and "shapes-int8/1/model.onnx" in text
    result = json.loads(out.read_text())
    assert result["providers"] == [CPU]
    rows = result["results"]
    assert [(r["runtime"], r["batch_size"]) for r in rows] == [("onnx", 1), ("onnx", 4)]
    for r in rows:
        assert r["iterations"] >= 5
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput"] > 0


def test_bench_an_onnx_file_next_to_its_keras_model(exported, run_dir, capsys):
    model = exported.row("fp32").path / "model.onnx"
    code = main(
        ["bench", str(model), "--batch-sizes", "2", "--seconds", "0.05", "--keras", str(run_dir)]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("onnx ") and " 2 " in line for line in lines)
    assert any(line.startswith("keras ") and " 2 " in line for line in lines)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.onnx"], "missing.onnx does not exist"),
        (["{model}", "--batch-sizes", "0"], "--batch-sizes must be positive integers"),
        (["{model}", "--device", "gpu"], "--device must be one of auto, cpu, cuda, tensorrt"),
        (["{model}", "--threads", "-1"], "--threads must be 0"),
    ],
)
def test_bench_bad_input(exported, tmp_path, capsys, argv, message):
    model = str(exported.row("fp32").path / "model.onnx")
    code = main(["bench", *(a.replace("{model}", model) for a in argv)])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has CUDA")
def test_explicit_cuda_fails_clearly_when_unavailable(exported, capsys):
    model = str(exported.row("fp32").path / "model.onnx")
    for device, provider in (("cuda", CUDA), ("tensorrt", TENSORRT)):
        assert main(["bench", model, "--device", device, "--seconds", "0.01"]) == 2
        err = capsys.readouterr().err
        assert f"--device {device}: onnxruntime has no {provider}" in err
        assert "--device cpu" in err


def test_auto_on_this_machine_falls_back_to_cpu_with_a_warning(exported, capsys):
    if CUDA in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    model = str(exported.row("fp32").path / "model.onnx")
    assert main(["bench", model, "--device", "auto", "--seconds", "0.01"]) == 0
    captured = capsys.readouterr()  # the CLI logs to stderr (its own handler, not caplog's)
    assert "providers=CPUExecutionProvider" in captured.out
    assert "WARNING" in captured.err and "--device auto: no CUDA execution provider" in captured.err


def test_provider_policy(caplog):
    with_gpu = [TENSORRT, CUDA, CPU]
    assert plan_providers("cpu", with_gpu) == [CPU]
    assert plan_providers("cuda", with_gpu) == [CUDA, CPU]
    assert plan_providers("tensorrt", with_gpu) == [TENSORRT, CUDA, CPU]
    assert plan_providers("auto", with_gpu) == [CUDA, CPU]
    with caplog.at_level(logging.WARNING, logger="tl2edge.export"):
        assert plan_providers("auto", [CPU]) == [CPU]
    assert "no CUDA execution provider" in caplog.text and "running on CPU" in caplog.text
    with pytest.raises(UserError, match="--device cuda: onnxruntime has no CUDAExecutionProvider"):
        plan_providers("cuda", [CPU])
    with pytest.raises(UserError, match="--device tensorrt: onnxruntime has no Tensorrt"):
        plan_providers("tensorrt", [CUDA, CPU])


def test_a_provider_that_did_not_load(caplog):
    # ORT drops a provider whose libraries fail to load without raising: read what it got.
    with pytest.raises(UserError, match="CUDAExecutionProvider is installed but did not load"):
        check_providers("cuda", [CUDA, CPU], [CPU])
    with pytest.raises(UserError, match="TensorrtExecutionProvider is installed but did not load"):
        check_providers("tensorrt", [TENSORRT, CUDA, CPU], [CUDA, CPU])
    check_providers("cuda", [CUDA, CPU], [CUDA, CPU])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tl2edge.export"):
        check_providers("auto", [CUDA, CPU], [CPU])
    assert "CUDAExecutionProvider did not load; running on CPUExecutionProvider" in caplog.text


def test_measure_counts_iterations_and_orders_percentiles():
    calls = []
    t = measure(lambda: calls.append(1), batch_size=4, warmup=3, seconds=0.0, min_iterations=7)
    assert len(calls) == 10 and t.iterations == 7 and t.batch_size == 4
    assert t.min_ms <= t.p50_ms <= t.p90_ms <= t.p99_ms
