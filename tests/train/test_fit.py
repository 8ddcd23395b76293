"""Training end to end on tiny data: run dir contract, strategies, transfer, resume.

Run: .venv/bin/pytest tests/train/test_fit.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tl2edge.errors import UserError
from tl2edge.train.fit import train
from tl2edge.train.weights import backbone_arrays


def test_run_dir_contract(base_run, tiny_data):
    from tl2edge.train.model import load_inference_model

    for name in (
        "model.keras",
        "labels.json",
        "run.json",
        "config.json",
        "history.json",
        "metrics.json",
        "curves.png",
        "confusion.png",
        "report.md",
        "state.json",
    ):
        assert (base_run / name).is_file(), name
    assert not (base_run / "checkpoints").exists()
    labels = json.loads((base_run / "labels.json").read_text())
    assert labels == sorted(p.name for p in tiny_data.iterdir())
    run = json.loads((base_run / "run.json").read_text())
    assert run["config"]["image_size"] == 32 and run["seed"] == 1
    assert len(run["data_fingerprint"]) == 64 and run["versions"]["tensorflow"]
    assert run["counts"]["train"] + run["counts"]["val"] == 24
    metrics = json.loads((base_run / "metrics.json").read_text())
    assert set(metrics["per_class"]) == set(labels)
    assert np.asarray(metrics["confusion_matrix"]).sum() == run["counts"]["val"]
    history = json.loads((base_run / "history.json").read_text())
    assert [h["phase"] for h in history] == ["scratch", "scratch"]
    assert json.loads((base_run / "state.json").read_text())["status"] == "complete"
    for png in ("curves.png", "confusion.png"):
        assert Image.open(base_run / png).size[0] > 100
    model = load_inference_model(base_run / "model.keras")
    assert [lay.name for lay in model.layers if lay.name == "augment"] == []
    assert model.dtype_policy.name == "float32"
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_fingerprint_is_stable_and_tracks_the_data(base_run, tiny_data, tmp_path):
    from tl2edge.train.data import load_data

    run = json.loads((base_run / "run.json").read_text())
    again = load_data(tiny_data, image_size=32, seed=1)
    assert again.fingerprint == run["data_fingerprint"]
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    assert load_data(copy, image_size=32, seed=1).fingerprint == run["data_fingerprint"]
    first = sorted(copy.rglob("*.png"))[0]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(first)  # same name, other pixels
    assert load_data(copy, image_size=32, seed=1).fingerprint != run["data_fingerprint"]


def test_feature_extraction_keeps_the_backbone_and_fine_tune_moves_only_top_blocks(
    base_run, tiny_data, tmp_path, tiny_config
):
    from tl2edge.train.model import load_inference_model

    source = backbone_arrays(load_inference_model(base_run / "model.keras").get_layer("vgg16"))
    fe = train(
        tiny_config(tiny_data, weights=str(base_run), strategy="feature-extraction", epochs_head=1),
        tmp_path / "fe",
    )
    after = backbone_arrays(load_inference_model(fe / "model.keras").get_layer("vgg16"))
    assert all(np.array_equal(source[k], after[k]) for k in source)
    assert "backbone of run" in json.loads((fe / "run.json").read_text())["weights"]

    ft = train(
        tiny_config(
            tiny_data,
            weights=str(base_run),
            strategy="fine-tune",
            unfreeze_blocks=1,
            lr_finetune=1e-3,
        ),
        tmp_path / "ft",
    )
    tuned = backbone_arrays(load_inference_model(ft / "model.keras").get_layer("vgg16"))
    changed = {k.split("_")[0] for k in source if not np.array_equal(source[k], tuned[k])}
    assert changed == {"block5"}
    phases = [h["phase"] for h in json.loads((ft / "history.json").read_text())]
    assert phases == ["head", "finetune"]


def test_augment_and_class_weights_on_an_unbalanced_folder(tmp_path, tiny_config):
    from tl2edge.synth import write_dataset
    from tl2edge.train.data import class_weights

    data = write_dataset(
        tmp_path / "unbal", task="target", per_class=8, size=32, classes=2, progress=False
    )
    for p in sorted((data / "crescent").glob("*.png"))[:5]:
        p.unlink()
    weights = class_weights(np.array([0] * 8 + [1] * 3), 2)
    assert weights[1] > weights[0]
    cfg = tiny_config(data, augment=True, epochs_finetune=0, tensorboard=True)
    run = train(cfg, tmp_path / "run")
    from tl2edge.train.model import load_inference_model

    assert "augment" not in [lay.name for lay in load_inference_model(run / "model.keras").layers]
    used = json.loads((run / "run.json").read_text())["class_weights"]
    assert used["crescent"] > used["hexagon"]  # 3 crescents against 8 hexagons, before the split
    assert list((run / "tensorboard" / "scratch").rglob("events.out.tfevents.*"))


def test_separate_validation_folder(tmp_path, tiny_data, tiny_config):
    from tl2edge.synth import write_dataset

    val = write_dataset(
        tmp_path / "val", task="target", per_class=2, size=32, classes=3, seed=9, progress=False
    )
    run = train(tiny_config(tiny_data, val_dir=str(val), epochs_finetune=0), tmp_path / "run")
    assert json.loads((run / "run.json").read_text())["counts"] == {"train": 24, "val": 6}
    other = write_dataset(
        tmp_path / "other", task="target", per_class=2, size=32, classes=2, progress=False
    )
    with pytest.raises(UserError, match="same class folders"):
        train(tiny_config(tiny_data, val_dir=str(other)), tmp_path / "run2")


def test_bad_images_stop_training_unless_skipped(tmp_path, tiny_config):
    from tl2edge.synth import write_dataset

    data = write_dataset(
        tmp_path / "d", task="target", per_class=6, size=32, classes=2, progress=False
    )
    bad = sorted(data.iterdir())[0] / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(UserError, match=r"broken\.jpg") as exc:
        train(tiny_config(data, epochs_finetune=0), tmp_path / "r1")
    assert "--skip-bad-images" in str(exc.value)
    assert not (tmp_path / "r1").exists()
    run = train(tiny_config(data, epochs_finetune=0, skip_bad_images=True), tmp_path / "r2")
    record = json.loads((run / "run.json").read_text())
    assert [b["path"] for b in record["bad_images"]] == [str(bad)]
    assert "unreadable images skipped: 1" in (run / "report.md").read_text()


def test_existing_run_dir_is_not_overwritten(base_run, tiny_data, tiny_config):
    before = (base_run / "model.keras").read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        train(tiny_config(tiny_data), base_run)
    assert (base_run / "model.keras").read_bytes() == before


def test_resume_refuses_a_dir_without_checkpoint(tmp_path, base_run, tiny_data, tiny_config):
    with pytest.raises(UserError, match="no resumable run"):
        train(tiny_config(tiny_data), tmp_path / "nothing", resume=True)
    with pytest.raises(UserError, match="already complete"):
        train(tiny_config(tiny_data), base_run, resume=True)


def test_sigterm_leaves_a_resumable_run(tmp_path, tiny_data, tiny_config):
    out = tmp_path / "interrupted"
    cmd = [
        sys.executable,
        "-m",
        "tl2edge",
        "train",
        str(tiny_data),
        "--out",
        str(out),
        "--image-size",
        "32",
        "--weights",
        "none",
        "--epochs-head",
        "6",
        "--epochs-finetune",
        "0",
        "--batch-size",
        "8",
        "--dense-units",
        "16",
        "--patience",
        "100",
        "--no-tensorboard",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ}
    )
    backup = out / "checkpoints" / "scratch-backup"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if backup.is_dir() and any(backup.rglob("*.json")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, (
        "training ended before it could be interrupted:\n" + proc.stdout.read()
    )
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "--resume" in output
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "interrupted"

    done = train(
        tiny_config(tiny_data, epochs_head=6, epochs_finetune=0, patience=100), out, resume=True
    )
    history = json.loads((done / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6], (
        out / "history-scratch.csv"
    ).read_text()
    assert json.loads((done / "state.json").read_text())["status"] == "complete"


def test_resume_refuses_changed_data(tmp_path, tiny_data, tiny_config):
    from tl2edge import rundir
    from tl2edge.train.data import load_data

    cfg = tiny_config(tiny_data)
    data = load_data(tiny_data, image_size=32, val_split=cfg.val_split, seed=cfg.seed)
    run = rundir.RunDir.create(tmp_path / "run")
    run.write_config(cfg)
    run.write_labels(data.classes)
    run.write_split(data.saved_split())
    run.write_state(rundir.INTERRUPTED, phases_done=[])
    run.file(rundir.CHECKPOINTS).mkdir()
    saved = data.saved_split()
    run.write_split(rundir.SavedSplit(saved.classes, saved.train, saved.val, "0" * 64))
    with pytest.raises(UserError, match="data dir changed since the run"):
        train(cfg, run.path, resume=True)
    renamed = rundir.SavedSplit(("x", *saved.classes[1:]), saved.train, saved.val, data.fingerprint)
    run.write_split(renamed)
    with pytest.raises(UserError, match="now has classes"):
        train(cfg, run.path, resume=True)
    assert run.state()["status"] == rundir.INTERRUPTED  # nothing was touched


def test_run_dir_records_the_split(base_run, tiny_data):
    from tl2edge import rundir

    run = rundir.RunDir.open(base_run)
    split = run.split()
    assert (
        split.fingerprint == run.record()["data_fingerprint"] == rundir.data_fingerprint(tiny_data)
    )
    files = {p for p, _ in split.train} | {p for p, _ in split.val}
    assert len(files) == len(split.train) + len(split.val) == 24
    assert files == {p.relative_to(tiny_data).as_posix() for p in tiny_data.rglob("*.png")}
    assert all(split.classes[y] == p.split("/")[0] for p, y in split.train + split.val)
