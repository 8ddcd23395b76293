"""A pruned run goes through export and serving unchanged: prune -> export -> serve, and the
official tritonclient gets the pruned model's answers.

Run: .venv/bin/pytest tests/serve/test_prune_roundtrip.py -q
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from servekit import ServerThread, random_pixels
from test_protocols import _triton_python


@pytest.mark.slow
def test_prune_export_serve_answers_through_tritonclient(tmp_path):
    from google.protobuf import descriptor_pb2

    from tl2edge._proto import grpc_service_pb2, model_config_pb2
    from tl2edge.export.api import export
    from tl2edge.synth import write_dataset
    from tl2edge.train.config import TrainConfig
    from tl2edge.train.fit import train
    from tl2edge.train.model import load_inference_model
    from tl2edge.train.prune_fit import prune

    python = _triton_python()
    data = write_dataset(
        tmp_path / "data", task="target", per_class=6, size=32, classes=3, seed=2, progress=False
    )
    parent = train(
        TrainConfig(
            data_dir=str(data),
            image_size=32,
            weights="none",
            epochs_head=1,
            epochs_finetune=0,
            batch_size=8,
            dense_units=16,
            tensorboard=False,
        ),
        tmp_path / "parent",
    )
    result = prune(
        parent,
        out=tmp_path / "pruned",
        target_speedup=2,
        method="norm",
        steps=1,
        epochs=0,
        measure=False,
    )
    assert result.speedup >= 2
    exported = export(
        result.run_dir, repository=tmp_path / "repo", name="small", variants=("fp32",)
    )
    assert exported.row("fp32").max_abs_diff < 1e-4  # export's parity gate passed

    pixels = random_pixels(3, size=32, seed=4)
    np.save(tmp_path / "pixels.npy", pixels)
    files = descriptor_pb2.FileDescriptorSet()
    for module in (grpc_service_pb2, model_config_pb2):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    (tmp_path / "ours.bin").write_bytes(files.SerializeToString())
    with ServerThread(tmp_path / "repo") as server:
        run = subprocess.run(
            [
                python,
                str(Path(__file__).parent / "triton_script.py"),
                server.address,
                "small-fp32",
                str(tmp_path / "pixels.npy"),
                str(tmp_path / "ours.bin"),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert out["model_ready"]
    assert out["model_metadata"]["inputs"][0]["shape"] == ["-1", "32", "32", "3"]
    keras_probs = load_inference_model(result.run_dir / "model.keras").predict(
        pixels.astype(np.float32), verbose=0
    )
    np.testing.assert_allclose(np.array(out["probs"], np.float32), keras_probs, atol=1e-4)
