"""The streaming data pipeline (data larger than memory) against the in-memory one.

Run: .venv/bin/pytest tests/train/test_stream.py -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tl2edge.errors import UserError
from tl2edge.images import BadImage, decode_rgb
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


def test_a_saved_split_decodes_in_file_order_and_names_each_broken_file(
    tiny_data, tmp_path, monkeypatch
):
    """The saved split is decoded in parallel chunks; the pixels come back in the split's order
    and every unreadable file is named in one error."""
    from tl2edge.train import data as data_module
    from tl2edge.train.data import load_saved_split

    monkeypatch.setattr(data_module, "CHUNK", 3)  # several chunks, a short last one
    folder = shutil.copytree(tiny_data, tmp_path / "data")
    memory = load_data(folder, image_size=32, seed=4, pipeline="memory")
    split = memory.saved_split()
    train_files = [(folder / p, y) for p, y in split.train]
    val_files = [(folder / p, y) for p, y in split.val]
    saved = load_saved_split(split, train_files, val_files, image_size=32)
    assert np.array_equal(saved.train.x, memory.train.x)
    assert np.array_equal(saved.val.x, memory.val.x)
    broken = [train_files[4][0], val_files[0][0]]
    for path in broken:
        path.write_bytes(b"not an image")
    with pytest.raises(UserError) as err:
        load_saved_split(split, train_files, val_files, image_size=32)
    assert all(str(path) in str(err.value) for path in broken)


def test_pixels_of_a_streamed_split_equal_the_in_memory_ones(tiny_data):
    memory = load_data(tiny_data, image_size=32, seed=4, pipeline="memory")
    stream = load_data(tiny_data, image_size=32, seed=4, pipeline="stream")
    idx = np.array([0, 3, 5])
    assert np.array_equal(stream.train.pixels(idx), memory.train.pixels(idx))
    assert stream.train.pixels(np.array([], np.int64)).shape == (0, 32, 32, 3)


def _stream(tiny_data, size: int = 16):
    return load_data(tiny_data, image_size=size, seed=4, pipeline="stream")


def test_a_cached_stream_gives_the_same_batches_as_memory(tiny_data, tmp_path):
    from tl2edge.train.cache import cache_data

    memory = load_data(tiny_data, image_size=16, seed=4, pipeline="memory")
    cached = cache_data(_stream(tiny_data), tmp_path / "cache")
    assert cached.train.x is None and cached.train.cache and cached.val.cache
    assert cached.train.cache != cached.val.cache
    assert np.array_equal(np.load(cached.train.cache), memory.train.x)
    assert np.array_equal(np.load(cached.val.cache), memory.val.x)
    assert "cached in" in cached.summary()
    for split in ("train", "val"):
        a = make_dataset(getattr(memory, split), batch_size=5, training=split == "train", seed=9)
        b = make_dataset(getattr(cached, split), batch_size=5, training=split == "train", seed=9)
        got_a, got_b = _batches(a, 2), _batches(b, 2)  # two epochs: reshuffled alike
        assert len(got_a) == len(got_b) > 1
        for (xa, ya), (xb, yb) in zip(got_a, got_b, strict=True):
            assert xb.dtype == np.float32 and xb.shape[1:] == (16, 16, 3)
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    idx = np.array([4, 0, 2])
    assert np.array_equal(cached.train.pixels(idx), memory.train.pixels(idx))


def test_a_second_run_reads_the_cache_without_decoding(tiny_data, tmp_path, monkeypatch):
    """Neither the up-front check nor the batches decode a file the cache already holds."""
    from tl2edge.train import cache, data
    from tl2edge.train.cache import cache_data, checked_digests, checked_file

    memory = load_data(tiny_data, image_size=16, seed=4, pipeline="memory")
    first = cache_data(_stream(tiny_data), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [Path(first.train.cache).name, Path(first.val.cache).name, checked_file(tmp_path).name]
    )
    assert checked_digests(tmp_path) == set(first.train.digests + first.val.digests)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    def fail(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(cache, "decode_rgb", fail)
    monkeypatch.setattr(data, "decode_rgb", fail)
    again = load_data(
        tiny_data, image_size=16, seed=4, pipeline="stream", checked=checked_digests(tmp_path)
    )
    assert again.fingerprint == first.fingerprint and again.train.paths == first.train.paths
    second = cache_data(again, tmp_path)
    assert (second.train.cache, second.val.cache) == (first.train.cache, first.val.cache)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps  # not rewritten
    a = make_dataset(memory.train, batch_size=5, training=True, seed=9)
    b = make_dataset(second.train, batch_size=5, training=True, seed=9)
    for (xa, ya), (xb, yb) in zip(_batches(a, 1), _batches(b, 1), strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_the_check_still_decodes_new_files_and_catches_broken_ones(tiny_data, tmp_path):
    from tl2edge.train.cache import cache_data, checked_digests, checked_file

    cache_data(_stream(tiny_data), tmp_path / "cache")
    known = checked_digests(tmp_path / "cache")
    folder = tmp_path / "data"
    shutil.copytree(tiny_data, folder)
    victim = sorted(folder.rglob("*.png"))[0]
    victim.write_bytes(b"not an image")  # new content: decoded, and refused
    with pytest.raises(UserError, match=r"1 image file.* could not be read"):
        load_data(folder, image_size=16, seed=4, pipeline="stream", checked=known)
    checked_file(tmp_path / "cache").write_bytes(b"\0" * 33)  # damaged: no digest trusted
    assert checked_digests(tmp_path / "cache") == frozenset()


def test_other_files_or_another_size_get_another_cache_file(tiny_data, tmp_path):
    from tl2edge.train.cache import cache_file

    stream = _stream(tiny_data)
    names = {
        cache_file(stream.train, tmp_path),
        cache_file(stream.val, tmp_path),
        cache_file(_stream(tiny_data, size=8).train, tmp_path),
        cache_file(load_data(tiny_data, image_size=16, seed=5, pipeline="stream").train, tmp_path),
    }
    assert len(names) == 4


@pytest.mark.parametrize("damage", ["truncate", "grow", "header"])
def test_a_damaged_cache_file_is_rebuilt_not_read(tiny_data, tmp_path, damage):
    from tl2edge.train.cache import cache_split

    memory = load_data(tiny_data, image_size=16, seed=4, pipeline="memory")
    split = cache_split(_stream(tiny_data).train, tmp_path)
    path, n = Path(split.cache), len(split)
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[:-100])
    elif damage == "grow":
        path.write_bytes(good + b"\0" * 16)
    else:  # another shape in the header, the same size
        path.write_bytes(good.replace(f"({n}, 16, 16, 3)".encode(), f"({n}, 16, 3, 16)".encode()))
    assert path.read_bytes() != good
    rebuilt = cache_split(_stream(tiny_data).train, tmp_path)
    assert Path(rebuilt.cache) == path and path.read_bytes() == good
    assert np.array_equal(rebuilt.pixels(np.arange(len(rebuilt))), memory.train.x)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_not_enough_disk_is_a_clear_error_and_leaves_no_file(tiny_data, tmp_path, monkeypatch):
    from tl2edge.train import cache

    stream = _stream(tiny_data)
    pixels = (len(stream.train) + len(stream.val)) * 16 * 16 * 3
    usage = shutil.disk_usage(tmp_path)
    # room for the training split's file, not for both: neither is written
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda _: usage._replace(free=pixels - 1))
    with pytest.raises(UserError, match=r"--data-cache .* need .* only .* free"):
        cache.cache_data(stream, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda _: usage._replace(free=100))
    with pytest.raises(UserError, match=r"training .* need .* only 0.0 MiB is free"):
        cache.cache_split(stream.train, tmp_path / "cache", what="training")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_disk_full_while_writing_leaves_no_file(tiny_data, tmp_path, monkeypatch):
    """The free-space check passed, then another writer filled the disk."""
    import errno

    from tl2edge.train import cache

    stream = _stream(tiny_data)
    written = []

    class SmallDisk:
        def __init__(self, path, mode):
            self.f = open(path, mode)  # noqa: SIM115 (closed in __exit__)

        def write(self, data):
            if sum(written) + len(data) > 2_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(len(data))
            return self.f.write(data)

        def flush(self):
            self.f.flush()

        def fileno(self):
            return self.f.fileno()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(cache, "open", SmallDisk, raising=False)  # shadows the builtin
    with pytest.raises(UserError, match="ran out of space"):
        cache.cache_split(stream.train, tmp_path, what="training")
    assert written and list(tmp_path.iterdir()) == []


def test_a_file_that_breaks_while_caching_leaves_no_file(tiny_data, tmp_path, monkeypatch):
    from tl2edge.train import cache

    stream = _stream(tiny_data)
    broken = stream.train.files()[-1]

    def decode(path, size):
        if path == broken:
            raise BadImage("truncated")
        return decode_rgb(path, size)

    monkeypatch.setattr(cache, "decode_rgb", decode)
    with pytest.raises(UserError, match="readable when the data was checked"):
        cache.cache_split(stream.train, tmp_path, what="training")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("pipeline", ["stream", "memory"])
def test_train_caches_streamed_splits_only(tiny_data, tmp_path, tiny_config, pipeline):
    from tl2edge.train.fit import _load_data

    cfg = tiny_config(tiny_data, data_pipeline=pipeline, data_cache=str(tmp_path / "cache"))
    data = _load_data(cfg)
    files = sorted(p.name for p in (tmp_path / "cache").glob("*"))
    if pipeline == "stream":
        assert data.train.x is None and len(files) == 3
        assert {Path(data.train.cache).name, Path(data.val.cache).name} < set(files)
    else:
        assert data.train.x is not None and not data.train.cache and files == []
