"""Structured pruning: FLOPs counting, surgery, the schedule's budget, the run dir it writes.

Run: .venv/bin/pytest tests/train/test_prune.py -q
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tl2edge.errors import UserError


@pytest.fixture(scope="module")
def vgg():
    import keras

    from tl2edge.train.model import build_model

    keras.utils.set_random_seed(0)
    return build_model(3, image_size=32, dense_units=16)


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3)).astype(np.float32)


def test_flops_match_a_hand_count():
    import keras
    from keras import layers

    from tl2edge.train.flops import count_flops, layer_costs

    x = keras.Input((8, 8, 3))
    h = layers.Conv2D(4, 3, padding="same", name="c1")(x)
    h = layers.MaxPooling2D(name="p")(h)  # 4x4x4
    h = layers.Conv2D(6, 3, padding="valid", name="c2")(h)  # 2x2x6
    h = layers.GlobalAveragePooling2D()(h)
    h = layers.Dense(5, name="d1")(h)
    model = keras.Model(x, layers.Dense(2, name="d2")(h))
    costs = {c.name: (c.macs, c.params) for c in layer_costs(model)}
    assert costs == {
        "c1": (8 * 8 * 3 * 3 * 3 * 4, 3 * 3 * 3 * 4 + 4),
        "c2": (2 * 2 * 3 * 3 * 4 * 6, 3 * 3 * 4 * 6 + 6),
        "d1": (6 * 5, 6 * 5 + 5),
        "d2": (5 * 2, 5 * 2 + 2),
    }
    assert count_flops(model) == 2 * (6912 + 864 + 30 + 10)


def test_keeping_every_filter_gives_the_parent_exactly(vgg):
    from tl2edge.train.prune import conv_sites, prune_model

    keep = {s.name: np.arange(s.filters) for s in conv_sites(vgg)}
    pruned = prune_model(vgg, keep)
    x = _pixels(4)
    np.testing.assert_array_equal(pruned.predict(x, verbose=0), vgg.predict(x, verbose=0))
    for a, b in zip(pruned.get_weights(), vgg.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def _random_keep(model, seed: int = 1) -> dict[str, np.ndarray]:
    from tl2edge.train.prune import conv_sites

    rng = np.random.default_rng(seed)
    return {
        s.name: np.sort(rng.choice(s.filters, max(1, s.filters // 3), replace=False))
        for s in conv_sites(model)
    }


def test_pruned_weights_are_the_kept_filters_across_conv_pool_and_dense(vgg):
    from tl2edge.train.flops import count_flops
    from tl2edge.train.prune import conv_sites, flops_counter, prune_model

    keep = _random_keep(vgg)
    pruned = prune_model(vgg, keep)
    parent_vgg, pruned_vgg = vgg.get_layer("vgg16"), pruned.get_layer("vgg16")
    prev = np.arange(3)
    for site in conv_sites(vgg):
        kernel, bias = parent_vgg.get_layer(site.name).get_weights()
        new_kernel, new_bias = pruned_vgg.get_layer(site.name).get_weights()
        idx = keep[site.name]
        assert new_kernel.shape == (3, 3, len(prev), len(idx))  # across pools too
        np.testing.assert_array_equal(new_kernel, kernel[:, :, prev][..., idx])
        np.testing.assert_array_equal(new_bias, bias[idx])
        prev = idx
    dense = pruned.get_layer("dense").get_weights()[0]
    np.testing.assert_array_equal(dense, vgg.get_layer("dense").get_weights()[0][prev])
    np.testing.assert_array_equal(
        pruned.get_layer("probs").get_weights()[0], vgg.get_layer("probs").get_weights()[0]
    )
    # The contract stays: raw 0..255 `image` in, preprocessing inside, `probs` out.
    assert pruned.input_shape == (None, 32, 32, 3) and pruned.layers[0].name == "image"
    assert pruned.get_layer("preprocess") is not None and pruned.output_shape == (None, 3)
    counted = flops_counter(vgg)({k: len(v) for k, v in keep.items()})
    assert counted == count_flops(pruned) < count_flops(vgg)


def test_a_pruned_model_computes_what_the_parent_computes_with_those_filters_zeroed(vgg):
    import keras

    from tl2edge.train.prune import conv_sites, prune_model

    keep = _random_keep(vgg, seed=2)
    masked = keras.models.clone_model(vgg)
    masked.set_weights(vgg.get_weights())
    for site in conv_sites(vgg):
        layer = masked.get_layer("vgg16").get_layer(site.name)
        kernel, bias = layer.get_weights()
        drop = np.setdiff1d(np.arange(site.filters), keep[site.name])
        kernel[..., drop] = 0
        bias[drop] = 0
        layer.set_weights([kernel, bias])
    x = _pixels(3, seed=5)
    np.testing.assert_allclose(
        prune_model(vgg, keep).predict(x, verbose=0), masked.predict(x, verbose=0), atol=1e-5
    )


def test_selection_reaches_the_target_and_drops_the_least_important_first(vgg):
    from tl2edge.train.prune import choose_filters, filter_counts, floors, flops_counter

    count = flops_counter(vgg)
    parent = filter_counts(vgg)
    scores = {k: np.arange(1, n + 1, dtype=float) for k, n in parent.items()}
    target = count(parent) / 3
    keep = choose_filters(scores, count, target_flops=target, floor=floors(vgg, parent, 0.1))
    assert count({k: len(v) for k, v in keep.items()}) <= target
    for name, idx in keep.items():  # the kept ones are the highest scores of each layer
        np.testing.assert_array_equal(idx, np.arange(parent[name] - len(idx), parent[name]))
    # A floor of every filter makes the target unreachable: nothing is dropped.
    keep = choose_filters(scores, count, target_flops=target, floor=parent)
    assert {k: len(v) for k, v in keep.items()} == parent


def test_a_cost_weight_cuts_the_layers_whose_filters_cost_more_flops(vgg):
    from tl2edge.train.prune import (
        choose_filters,
        filter_counts,
        floors,
        flops_counter,
        normalize,
    )

    count = flops_counter(vgg)
    parent = filter_counts(vgg)
    rng = np.random.default_rng(0)
    scores = {k: rng.random(n) for k, n in parent.items()}
    target = count(parent) / 3
    floor = floors(vgg, parent, 0.1)
    # FLOPs one filter costs: its own output map plus its input channel of the next layer.
    cost = {k: count(parent) - count({**parent, k: parent[k] - 1}) for k in parent}
    assert cost["block1_conv2"] == 2 * (32 * 32 * 9 * 64 + 16 * 16 * 9 * 128)
    dearest, cheapest = max(cost, key=cost.get), min(cost, key=cost.get)

    dropped = {}
    for beta in (0.0, 0.5, 1.0):
        keep = choose_filters(scores, count, target_flops=target, floor=floor, cost_weight=beta)
        left = {k: len(v) for k, v in keep.items()}
        assert count(left) <= target, beta
        assert all(left[k] >= floor[k] for k in parent), beta
        for k, idx in keep.items():  # within a layer, still the highest scores are kept
            np.testing.assert_array_equal(
                idx, np.sort(np.argsort(scores[k])[parent[k] - len(idx) :])
            )
        dropped[beta] = {k: parent[k] - left[k] for k in parent}
    assert dropped[0.0][dearest] < dropped[0.5][dearest] < dropped[1.0][dearest]
    assert dropped[0.0][cheapest] > dropped[0.5][cheapest] > dropped[1.0][cheapest]
    # With weight 0 the order is importance alone: every dropped filter scores below every
    # kept one, over all layers.
    ranked = normalize(scores)
    keep = choose_filters(scores, count, target_flops=target, floor=floor, cost_weight=0.0)
    gone = [s for k, v in ranked.items() for i, s in enumerate(v) if i not in set(keep[k])]
    kept = [s for k, v in ranked.items() for i, s in enumerate(v) if i in set(keep[k])]
    assert max(gone) < min(kept)


def test_a_channel_multiple_keeps_every_width_a_multiple_of_it(vgg):
    from tl2edge.train.prune import choose_filters, filter_counts, floors, flops_counter

    count = flops_counter(vgg)
    parent = filter_counts(vgg)
    rng = np.random.default_rng(1)
    scores = {k: rng.random(n) for k, n in parent.items()}
    target = count(parent) / 3
    floor = floors(vgg, parent, 0.1)
    for beta in (0.0, 0.5):
        keep = choose_filters(
            scores, count, target_flops=target, floor=floor, cost_weight=beta, channel_multiple=16
        )
        left = {k: len(v) for k, v in keep.items()}
        assert count(left) <= target
        assert all(n % 16 == 0 and n >= max(16, floor[k]) for k, n in left.items()), left
        for k, idx in keep.items():  # a layer still keeps its highest scores
            np.testing.assert_array_equal(
                idx, np.sort(np.argsort(scores[k])[parent[k] - len(idx) :])
            )
    single = choose_filters(scores, count, target_flops=target, floor=floor)
    assert any(len(v) % 16 for v in single.values())  # unconstrained widths are not all multiples
    # a layer too narrow for groups (fewer than twice the multiple) drops single filters
    small = {"a": rng.random(24), "b": rng.random(64)}
    keep = choose_filters(
        small,
        lambda f: 10 * f["a"] + f["b"],
        target_flops=10 * 20 + 40,
        floor={"a": 1, "b": 1},
        channel_multiple=16,
    )
    assert len(keep["b"]) % 16 == 0 and len(keep["a"]) < 24


def test_taylor_scores_rank_a_dead_filter_last(vgg):
    import keras

    from tl2edge.train.prune import norm_scores, taylor_scores

    model = keras.models.clone_model(vgg)
    model.set_weights(vgg.get_weights())
    layer = model.get_layer("vgg16").get_layer("block3_conv1")
    kernel, bias = layer.get_weights()
    kernel[..., 5], bias[5] = 0, -1.0  # always 0 after ReLU: no effect on the loss
    layer.set_weights([kernel, bias])
    scores = taylor_scores(model, _pixels(6), np.array([0, 1, 2, 0, 1, 2]), batch_size=4)
    assert scores["block3_conv1"][5] == 0 and scores["block3_conv1"].max() > 0
    assert set(scores) == set(norm_scores(model)) and norm_scores(model)["block3_conv1"][5] == 0


def test_prune_writes_a_complete_run_that_export_opens(base_run, tmp_path):
    from tl2edge.export.rundir import load_keras_model, open_run
    from tl2edge.train.flops import count_flops
    from tl2edge.train.prune_fit import prune

    out = tmp_path / "pruned"
    result = prune(
        base_run,
        out=out,
        target_speedup=2.5,
        method="norm",
        steps=2,
        epochs=3,
        cost_weight=0.5,
        measure=False,
    )
    run = open_run(out)
    model = load_keras_model(run)
    parent = load_keras_model(open_run(base_run))
    assert result.speedup >= 2.5 and len(result.rounds) == 2 and result.stopped is None
    assert count_flops(parent) / count_flops(model) == pytest.approx(result.speedup)
    for name in (
        "run.json",
        "metrics.json",
        "history.json",
        "report.md",
        "prune.png",
        "curves.png",
    ):
        assert (out / name).is_file(), name
    lineage = json.loads((out / "prune.json").read_text())
    assert lineage["parent"] == str(base_run.resolve())
    assert lineage["cost_weight"] == 0.5
    assert json.loads((out / "prune_config.json").read_text())["cost_weight"] == 0.5
    sub = model.get_layer("vgg16")
    for name, layer in lineage["layers"].items():
        assert len(layer["kept"]) == layer["filters"] == sub.get_layer(name).kernel.shape[-1]
    assert json.loads((out / "state.json").read_text())["status"] == "complete"
    assert json.loads((out / "run.json").read_text())["pruning"]["speedup"] >= 2.5
    history = json.loads((out / "history.json").read_text())
    assert [h["phase"] for h in history] == ["prune-1"] * 3 + ["prune-2"] * 3
    assert [r["epochs"] for r in lineage["rounds"]] == [3, 3]
    for r in lineage["rounds"]:  # each step keeps its epoch of lowest validation loss
        rows = [h for h in history if h["phase"] == f"prune-{r['step']}"]
        assert r["kept_epoch"] == 1 + int(np.argmin([h["val_loss"] for h in rows]))
        assert r["accuracy"] == pytest.approx(rows[r["kept_epoch"] - 1]["val_accuracy"])
    assert result.accuracy == lineage["rounds"][-1]["accuracy"]
    report = (out / "report.md").read_text()
    assert "Pruning report" in report
    assert "norm-l1 importance / FLOPs saved^0.5" in report
    kept = ", ".join(f"{r['kept_epoch']}/3" for r in lineage["rounds"])  # its own schedule,
    assert f"2 pruning step(s), epoch kept / run per step: {kept}" in report  # not the parent's
    assert "epochs head/fine-tune" not in report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_fine_tuning_epochs_default_to_a_number_of_updates():
    from tl2edge.train.prune_fit import MAX_AUTO_EPOCHS, MIN_UPDATES, fine_tune_epochs

    assert fine_tune_epochs(3, train_images=10, batch_size=32) == 3  # given: kept
    assert fine_tune_epochs(0, train_images=10_000, batch_size=32) == 0
    # the demo's 800 images, 25 batches: 2 epochs already make MIN_UPDATES
    assert fine_tune_epochs(None, train_images=800, batch_size=32) == 2
    assert fine_tune_epochs(None, train_images=100_000, batch_size=32) == 2  # never fewer
    # 240 images, 8 batches: 6 epochs, the fewest with MIN_UPDATES updates
    assert fine_tune_epochs(None, train_images=240, batch_size=32) == 6
    assert 6 * 8 >= MIN_UPDATES > 5 * 8
    assert fine_tune_epochs(None, train_images=20, batch_size=32) == MAX_AUTO_EPOCHS  # capped


def test_the_report_measures_int8_as_export_makes_it(base_run, tmp_path, monkeypatch):
    """The report's int8 is export's recipe choice on export's calibration sample; a model
    whose int8 fails export's gate gets no int8 row."""
    import tl2edge.export.select as select
    from tl2edge.export import rundir
    from tl2edge.export.config import ExportConfig
    from tl2edge.export.gates import GateFailed
    from tl2edge.train.prune import conv_sites, prune_model
    from tl2edge.train.prune_fit import read_parent
    from tl2edge.train.prune_output import measure_onnx

    run, _, parent, data = read_parent(base_run)
    pruned = prune_model(parent, {s.name: np.arange(s.filters // 2) for s in conv_sites(parent)})
    real, calls = select.choose_int8, []

    def spy(cfg, stage, fp32, calib_x, *args):
        calls.append((cfg, calib_x))
        if cfg.name == "pruned":
            raise GateFailed("int8 accuracy 10% is 80 points below fp32")
        out = real(cfg, stage, fp32, calib_x, *args)
        calls.append(out)
        return out

    monkeypatch.setattr(select, "choose_int8", spy)
    m = measure_onnx(parent, pruned, data, device="cpu", seconds=0.3, work=tmp_path, image_size=32)
    (cfg, calib), (int8_file, _, info), (_, _) = calls
    defaults = ExportConfig(run_dir=".", repository=".", name="x")
    assert (cfg.quantization, cfg.calibration_method, cfg.max_accuracy_drop) == (
        defaults.quantization,
        defaults.calibration_method,
        defaults.max_accuracy_drop,
    )
    train, _ = rundir.load_run_images(run)
    np.testing.assert_array_equal(
        calib, rundir.sample(train, defaults.calibration_samples, seed=defaults.seed)
    )
    assert m["int8_recipe"] == {"parent": info["chosen"]}
    assert m["variants"]["parent-int8"]["size_bytes"] == int8_file.stat().st_size
    assert set(m["variants"]) == {"parent-fp32", "parent-int8", "pruned-fp32"}
    assert set(m["ratios"]) == {"fp32"} and "80 points below" in m["int8_failed"]["pruned"]


def _fake_accuracy(monkeypatch, values):
    import tl2edge.train.prune_fit as prune_fit

    it = iter(values)
    monkeypatch.setattr(prune_fit, "_accuracy", lambda *a, **k: next(it))


def test_a_budget_exceeded_at_the_first_step_is_an_error_and_writes_nothing(
    base_run, tmp_path, monkeypatch
):
    from tl2edge.train.prune_fit import prune

    # parent 0.9; step 1: 0.5 after the cut, 0.5 after fine-tuning
    _fake_accuracy(monkeypatch, [0.9, 0.5, 0.5])
    with pytest.raises(UserError, match=r"first pruning step .* over --max-accuracy-drop 1"):
        prune(
            base_run,
            out=tmp_path / "out",
            target_speedup=2,
            method="norm",
            epochs=0,
            max_accuracy_drop=1.0,
            measure=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_a_budget_exceeded_later_keeps_the_last_step_within_it(base_run, tmp_path, monkeypatch):
    from tl2edge.train.prune_fit import prune

    _fake_accuracy(monkeypatch, [0.9, 0.9, 0.895, 0.5, 0.5] + [0.5] * 10)
    result = prune(
        base_run,
        out=tmp_path / "out",
        target_speedup=4,
        method="norm",
        steps=2,
        epochs=0,
        max_accuracy_drop=1.0,
        measure=False,
    )
    assert [r.step for r in result.rounds] == [1] and "step 2 lost 40.00 points" in result.stopped
    assert 1.9 < result.speedup < 2.1  # step 1 of 2 towards 4x: sqrt(4)
    lineage = json.loads((tmp_path / "out" / "prune.json").read_text())
    assert lineage["stopped"] == result.stopped
    assert "stopped before the target" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-speedup", "1"], "--target-speedup must be greater than 1"),
        (["--target-speedup", "0.5"], "--target-speedup must be greater than 1"),
        (["--target-speedup", "2", "--steps", "0"], "--steps must be at least 1"),
        (["--target-speedup", "2", "--device", "npu"], "--device must be one of"),
        (["--target-speedup", "2", "--cost-weight", "-1"], "--cost-weight must be in [0, 2]"),
    ],
)
def test_bad_flags_are_clear_errors_and_write_nothing(base_run, tmp_path, capsys, args, message):
    from tl2edge.cli import main

    out = tmp_path / "out"
    assert main(["prune", str(base_run), "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_an_incomplete_run_dir_is_refused(base_run, tmp_path, capsys):
    from tl2edge.cli import main

    broken = tmp_path / "running"
    shutil.copytree(base_run, broken)
    state = json.loads((broken / "state.json").read_text())
    (broken / "state.json").write_text(json.dumps({**state, "status": "running"}))
    out = tmp_path / "out"
    assert main(["prune", str(broken), "--out", str(out), "--target-speedup", "2"]) == 2
    assert "is not complete" in capsys.readouterr().err
    (broken / "model.keras").unlink()
    assert main(["prune", str(broken), "--out", str(out), "--target-speedup", "2"]) == 2
    assert "missing model.keras" in capsys.readouterr().err
    assert not out.exists()


def test_an_existing_out_is_not_overwritten(base_run, tmp_path, capsys):
    from tl2edge.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["prune", str(base_run), "--out", str(out), "--target-speedup", "2"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
