"""`tl2edge bench` on CPU, and the execution-provider policy shared with the server.
Run: .venv/bin/pytest tests/export -q
"""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from tl2edge.cli import main
from tl2edge.export.bench import measure
from tl2edge.serve.providers import CPU, CUDA, TENSORRT


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
        (
            ["{model}", "--device", "gpu"],
            "--device must be one of auto, cpu, openvino, cuda, tensorrt",
        ),
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
        assert f"--device {device}: this onnxruntime" in err and f"has no {provider}" in err
        assert "--device cpu" in err


def test_auto_on_this_machine_reports_what_it_chose(exported, capsys, monkeypatch):
    from tl2edge.serve import providers

    model = str(exported.row("fp32").path / "model.onnx")
    monkeypatch.setattr(providers, "auto_candidates", lambda: ["cpu"])
    assert main(["bench", model, "--device", "auto", "--seconds", "0.01"]) == 0
    assert "providers=CPUExecutionProvider" in capsys.readouterr().out
    # Two candidates: both are measured, the table says which was kept (both run on CPU here).
    real_open = providers.open_session
    monkeypatch.setattr(providers, "auto_candidates", lambda: ["cpu", "openvino"])
    monkeypatch.setattr(
        providers, "open_session", lambda path, device, config: real_open(path, "cpu", config)
    )
    assert main(["bench", model, "--device", "auto", "--seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "auto chose " in out and "cpu: b1 " in out and "openvino: b1 " in out


def test_measure_counts_iterations_and_orders_percentiles():
    calls = []
    t = measure(lambda: calls.append(1), batch_size=4, warmup=3, seconds=0.0, min_iterations=7)
    assert len(calls) == 10 and t.iterations == 7 and t.batch_size == 4
    assert t.min_ms <= t.p50_ms <= t.p90_ms <= t.p99_ms
