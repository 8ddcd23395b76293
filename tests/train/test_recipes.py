"""Transfer recipes: phase plans, per-block learning rates, schedules.

Run: .venv/bin/pytest tests/train/test_recipes.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tl2edge.errors import UserError
from tl2edge.train.recipes import Phase, learning_rate, make_optimizer, plan_phases


def test_plans_per_strategy(tiny_data, tiny_config):
    def plan(**kw):
        return plan_phases(tiny_config(tiny_data, weights="x.npz", **kw))

    assert [(p.name, p.backbone) for p in plan(strategy="feature-extraction")] == [
        ("head", "frozen")
    ]
    assert plan(strategy="fine-tune", unfreeze_blocks=2)[1].backbone == 2
    assert plan(strategy="all-blocks")[1].backbone == "all"
    assert plan(strategy="all-blocks")[1].block_lr is None
    disc = plan(strategy="discriminative", block_lr_ratio=0.5)[1]
    assert disc.backbone == "all" and disc.block_lr == (0.0625, 0.125, 0.25, 0.5, 1.0)
    assert [p.name for p in plan_phases(tiny_config(tiny_data))] == ["scratch"]
    with pytest.raises(UserError, match="--block-lr-ratio"):
        tiny_config(tiny_data, block_lr_ratio=0)
    with pytest.raises(UserError, match="--schedule"):
        tiny_config(tiny_data, schedule="linear")


def test_warmup_cosine_schedule():
    phase = Phase("finetune", "all", epochs=10, lr=1e-3, schedule="warmup-cosine")
    lr = learning_rate(phase, steps_per_epoch=10)
    assert float(lr(0)) == pytest.approx(1e-4)
    assert float(lr(10)) == pytest.approx(1e-3)  # warm-up: the first 10% of 100 steps
    assert float(lr(55)) == pytest.approx(5e-4, rel=0.05)
    assert float(lr(100)) == pytest.approx(0.0, abs=1e-9)
    assert learning_rate(Phase("head", "frozen", 1, 1e-3), steps_per_epoch=10) == 1e-3


def test_per_block_learning_rates_move_each_block_by_its_rate():
    import keras

    from tl2edge.train import model as vgg
    from tl2edge.train.weights import backbone_arrays

    keras.utils.set_random_seed(0)
    model = vgg.build_model(3, image_size=32, dense_units=8)
    vgg.set_trainable(model, "all")
    block_lr = (0.0, 0.125, 0.25, 0.5, 1.0)
    phase = Phase("finetune", "all", epochs=1, lr=1e-3, block_lr=block_lr)
    model.compile(make_optimizer(phase, steps_per_epoch=1), "sparse_categorical_crossentropy")
    before = backbone_arrays(model.get_layer("vgg16"))
    head_before = model.get_layer("probs").get_weights()[0].copy()
    rng = np.random.default_rng(0)
    model.train_on_batch(
        rng.integers(0, 256, (4, 32, 32, 3)).astype(np.float32), np.array([0, 1, 2, 0])
    )
    after = backbone_arrays(model.get_layer("vgg16"))
    # Adam's first step moves every weight with a gradient by ~lr (m/sqrt(v) = sign(g)):
    # the median step of a block's kernels is its learning rate.
    for block, mult in zip(
        ("block1", "block2", "block3", "block4", "block5"), block_lr, strict=True
    ):
        steps = np.concatenate(
            [
                np.abs(after[k] - before[k]).ravel()
                for k in before
                if k.startswith(block) and after[k].ndim == 4
            ]
        )
        if mult == 0:
            assert not steps.any(), block
        else:
            assert np.median(steps[steps > 0]) == pytest.approx(1e-3 * mult, rel=0.05), block
    head_step = np.abs(model.get_layer("probs").get_weights()[0] - head_before)
    assert np.median(head_step[head_step > 0]) == pytest.approx(1e-3, rel=0.05)


def test_discriminative_run_moves_every_block(base_run, tiny_data, tmp_path, tiny_config):
    from tl2edge.train.fit import train
    from tl2edge.train.model import load_inference_model
    from tl2edge.train.weights import backbone_arrays

    source = backbone_arrays(load_inference_model(base_run / "model.keras").get_layer("vgg16"))
    run = train(
        tiny_config(tiny_data, weights=str(base_run), strategy="discriminative", lr_finetune=1e-3),
        tmp_path / "disc",
    )
    tuned = backbone_arrays(load_inference_model(run / "model.keras").get_layer("vgg16"))
    changed = {k.split("_")[0] for k in source if not np.array_equal(source[k], tuned[k])}
    assert changed == {"block1", "block2", "block3", "block4", "block5"}
    assert [h["phase"] for h in json.loads((run / "history.json").read_text())] == [
        "head",
        "finetune",
    ]


def test_baseline_scratch_writes_both_results(base_run, tiny_data, tmp_path, tiny_config):
    from tl2edge.train.fit import train

    run = train(
        tiny_config(tiny_data, weights=str(base_run), strategy="all-blocks", baseline="scratch"),
        tmp_path / "run",
    )
    record = json.loads((run / "run.json").read_text())
    scratch = json.loads((run / "baseline-scratch" / "run.json").read_text())
    assert (run / "model.keras").is_file() and (run / "baseline-scratch" / "model.keras").is_file()
    assert scratch["config"]["weights"] == "none" and scratch["config"]["baseline"] == "none"
    assert scratch["config"]["epochs_head"] == 2  # the transfer run's 1 head + 1 fine-tune epoch
    assert scratch["counts"] == record["counts"]  # same split
    b = record["baseline"]
    assert b["val_accuracy"] == scratch["val_accuracy"]
    assert b["transfer_val_accuracy"] == record["val_accuracy"]
    assert b["gain_points"] == pytest.approx(
        100 * (record["val_accuracy"] - scratch["val_accuracy"]), abs=0.01
    )
    report = (run / "report.md").read_text()
    assert f"Transfer gain: {b['gain_points']:+.1f} points" in report
    with pytest.raises(UserError, match="--baseline scratch"):
        tiny_config(tiny_data, baseline="scratch")  # weights none: nothing to compare


def test_baseline_report_warns_when_scratch_wins():
    from tl2edge.train.baseline import baseline_md

    b = {
        "kind": "scratch",
        "run_dir": "baseline-scratch",
        "epochs": 12,
        "val_accuracy": 0.9,
        "train_s": 10.0,
        "transfer_val_accuracy": 0.6,
        "transfer_train_s": 8.0,
        "gain_points": -30.0,
    }
    text = baseline_md(b)
    assert "-30.0 points" in text and "from scratch did better" in text
    assert "did better" not in baseline_md({**b, "gain_points": 5.0, "val_accuracy": 0.55})
