"""Device planning (GPU paths tested through their logic; this machine has no GPU).

Run: .venv/bin/pytest tests/train/test_devices.py -q
"""

from __future__ import annotations

import json

import pytest

from tl2edge.train.config import TrainConfig
from tl2edge.train.fit import plan_devices, train


@pytest.mark.parametrize(
    ("gpus", "tf_config", "strategy", "mixed", "jit"),
    [
        (0, False, "default", False, False),  # CPU: float32, no XLA (3x slower on CPU)
        (1, False, "default", True, True),
        (4, False, "mirrored", True, True),
        (0, True, "multi-worker", False, False),
        (2, True, "multi-worker", True, True),
    ],
)
def test_auto_plan(gpus, tf_config, strategy, mixed, jit):
    plan = plan_devices(TrainConfig(data_dir="d"), gpus=gpus, tf_config=tf_config)
    assert (plan.strategy, plan.mixed_precision, plan.jit_compile) == (strategy, mixed, jit)


def test_explicit_flags_win():
    cfg = TrainConfig(data_dir="d", mixed_precision="off", jit_compile="off")
    plan = plan_devices(cfg, gpus=2, tf_config=False)
    assert not plan.mixed_precision and not plan.jit_compile
    cfg = TrainConfig(data_dir="d", mixed_precision="on", jit_compile="on")
    plan = plan_devices(cfg, gpus=0, tf_config=False)
    assert plan.mixed_precision and plan.jit_compile


def test_mixed_precision_training_saves_a_float32_model(tiny_data, tmp_path, tiny_config):
    """The mixed-precision code path, run on the CPU: the saved model is float32 throughout."""
    from tl2edge.train.model import load_inference_model

    cfg = tiny_config(tiny_data, epochs_finetune=0, mixed_precision="on")
    run = train(cfg, tmp_path / "mp")
    assert json.loads((run / "run.json").read_text())["device"]["mixed_precision"] is True
    model = load_inference_model(run / "model.keras")
    assert {lay.dtype_policy.name for lay in model.layers} == {"float32"}
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"
