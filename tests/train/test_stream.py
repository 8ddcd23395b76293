"""The streaming data pipeline (data larger than memory) against the in-memory one.

Run: .venv/bin/pytest tests/train/test_stream.py -q
"""

from __future__ import annotations

import json

import numpy as np

from tl2edge.train.data import load_data, make_dataset


def _batches(ds, epochs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for _ in range(epochs) for x, y in ds]


def test_stream_gives_the_same_batches_as_memory(tiny_data):
    memory = load_data(tiny_data, image_size=32, seed=4, pipeline="memory")
    stream = load_data(tiny_data, image_size=32, seed=4, pipeline="stream")
    assert memory.train.x is not None and stream.train.x is None and stream.val.x is None
    assert stream.train.paths == memory.train.paths and stream.fingerprint == memory.fingerprint
    for split in ("train", "val"):
        a = make_dataset(getattr(memory, split), batch_size=5, training=split == "train", seed=9)
        b = make_dataset(getattr(stream, split), batch_size=5, training=split == "train", seed=9)
        got_a, got_b = _batches(a, 2), _batches(b, 2)  # two epochs: reshuffled alike
        assert len(got_a) == len(got_b) > 1
        for (xa, ya), (xb, yb) in zip(got_a, got_b, strict=True):
            assert xa.dtype == xb.dtype == np.float32 and np.array_equal(xa, xb)
            assert np.array_equal(ya, yb)
    first, second = _batches(a, 1), _batches(a, 1)
    assert [y.tolist() for _, y in first] == [y.tolist() for _, y in second]  # val: fixed order


def test_a_folder_bigger_than_the_memory_limit_streams_and_trains(
    tiny_data, tmp_path, tiny_config, monkeypatch
):
    from tl2edge.train import data
    from tl2edge.train.fit import train

    # 24 images x 32x32x3 = 74 KB decoded; this limit lets memory hold 35 KB of it.
    monkeypatch.setattr(data, "available_memory_bytes", lambda: 50_000)
    assert data.load_data(tiny_data, image_size=32, seed=1).train.x is None
    run = train(tiny_config(tiny_data, epochs_finetune=0), tmp_path / "run")
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["data_pipeline"] == "auto"
    assert record["counts"]["train"] + record["counts"]["val"] == 24
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.asarray(metrics["confusion_matrix"]).sum() == record["counts"]["val"]
    assert (run / "model.keras").is_file()


def test_a_saved_split_too_big_for_memory_keeps_training_images_on_disk(tiny_data, monkeypatch):
    """Export and prune read a run's saved split: when it would not fit, the training images
    stay on disk (absolute paths, same batches), the validation images are decoded."""
    from tl2edge.train import data as data_module
    from tl2edge.train.data import load_saved_split

    memory = load_data(tiny_data, image_size=32, seed=4, pipeline="memory")
    split = memory.saved_split()
    train_files = [(tiny_data / p, y) for p, y in split.train]
    val_files = [(tiny_data / p, y) for p, y in split.val]
    monkeypatch.setattr(data_module, "available_memory_bytes", lambda: 1_000)
    saved = load_saved_split(split, train_files, val_files, image_size=32)
    assert saved.train.x is None and saved.train.files() == [str(p) for p, _ in train_files]
    assert np.array_equal(saved.val.x, memory.val.x) and saved.fingerprint == memory.fingerprint
    a = make_dataset(memory.train, batch_size=5, training=True, seed=9)
    b = make_dataset(saved.train, batch_size=5, training=True, seed=9)
    for (xa, ya), (xb, yb) in zip(_batches(a, 1), _batches(b, 1), strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_pixels_of_a_streamed_split_equal_the_in_memory_ones(tiny_data):
    memory = load_data(tiny_data, image_size=32, seed=4, pipeline="memory")
    stream = load_data(tiny_data, image_size=32, seed=4, pipeline="stream")
    idx = np.array([0, 3, 5])
    assert np.array_equal(stream.train.pixels(idx), memory.train.pixels(idx))
    assert stream.train.pixels(np.array([], np.int64)).shape == (0, 32, 32, 3)
