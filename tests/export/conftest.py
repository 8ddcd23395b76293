"""Fixtures for the export tests: a tiny run dir (VGG16 at 32x32, 3 classes) and one export.

The run's labels are what its own (random-init) model predicts, picked with a clear margin:
the fp32 model is then 100% accurate on its validation images, so an int8 model's accuracy
equals its agreement with fp32 and a broken quantization visibly fails the accuracy gate.
Building the run takes seconds; the one shared export (fp32, int8, fp16) about a minute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZE = 32
LABELS = ("alpha", "beta", "gamma")
PER_CLASS = 8
VAL_SPLIT = 0.25


def _candidate_images(n: int) -> np.ndarray:
    from tl2edge.synth import TASKS, render

    names = list(TASKS["target"])
    return np.stack(
        [render("target", names[i % len(names)], i, size=SIZE, seed=1) for i in range(n)]
    )


def _make_run(root: Path) -> Path:
    import keras

    from tl2edge.train.config import TrainConfig
    from tl2edge.train.model import build_model

    keras.utils.set_random_seed(0)
    model = build_model(len(LABELS), image_size=SIZE, dense_units=32)
    images = _candidate_images(240)
    features = keras.Model(model.input, model.get_layer("dense").output).predict(
        images.astype(np.float32), verbose=0
    )
    kernel, bias = model.get_layer("probs").get_weights()
    logits = features @ kernel + bias
    # Centre the logits so that every class is predicted for some images.
    bias = bias - logits.mean(axis=0)
    model.get_layer("probs").set_weights([kernel, bias])
    logits = features @ kernel + bias
    order = np.sort(logits, axis=1)
    margin = order[:, -1] - order[:, -2]
    pred = logits.argmax(axis=1)
    data = root / "data"
    for c, label in enumerate(LABELS):
        idx = np.flatnonzero(pred == c)
        idx = idx[np.argsort(-margin[idx])][:PER_CLASS]
        assert len(idx) == PER_CLASS, f"class {label}: only {len(idx)} candidate images"
        (data / label).mkdir(parents=True)
        for i in idx:
            Image.fromarray(images[i]).save(data / label / f"{label}_{i:04d}.png")
    from tl2edge import rundir
    from tl2edge.train.data import load_data

    cfg = TrainConfig(
        data_dir=str(data), image_size=SIZE, weights="none", val_split=VAL_SPLIT, seed=3
    )
    split = load_data(data, image_size=SIZE, val_split=VAL_SPLIT, seed=3)
    run = rundir.RunDir.create(root / "run")
    model.save(run.model_path)
    run.write_config(cfg)
    run.write_labels(LABELS)
    run.write_split(split.saved_split())
    run.write_record({"classes": list(LABELS), "data_fingerprint": split.fingerprint})
    run.write_state(rundir.COMPLETE)
    return run.path
    return run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return _make_run(tmp_path_factory.mktemp("export-run"))


@pytest.fixture(scope="session")
def exported(run_dir, tmp_path_factory):
    """One export of every variant into a fresh repository, shared by the read-only tests."""
    from tl2edge.export import export

    repo = tmp_path_factory.mktemp("repo") / "models"
    result = export(
        run_dir,
        repository=repo,
        name="shapes",
        variants=("fp32", "int8", "fp16"),
        quantization="auto",
        calibration_samples=16,
        max_accuracy_drop=25.0,
        bench_seconds=0.2,
    )
    return result


@pytest.fixture(scope="session")
def spec():
    """Image size and labels of the fixture run."""
    from types import SimpleNamespace

    return SimpleNamespace(size=SIZE, labels=LABELS)
