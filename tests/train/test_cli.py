"""`tl2edge train` on bad input: exit 2, a message naming the problem, nothing overwritten.

Run: .venv/bin/pytest tests/train/test_cli.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from tl2edge.cli import main


def _train(*args: str) -> list[str]:
    return [
        "train",
        *args,
        "--image-size",
        "32",
        "--weights",
        "none",
        "--epochs-head",
        "1",
        "--epochs-finetune",
        "0",
        "--no-tensorboard",
    ]


def test_missing_data_dir(tmp_path, capsys):
    assert main(_train(str(tmp_path / "nope"), "--out", str(tmp_path / "r"))) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_empty_data_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(_train(str(tmp_path / "empty"), "--out", str(tmp_path / "r"))) == 2
    assert "no class sub-folders" in capsys.readouterr().err


def test_one_class_and_empty_class(tmp_path, capsys, tiny_data):
    from PIL import Image

    one = tmp_path / "one"
    (one / "a").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(one / "a" / "x.png")
    assert main(_train(str(one), "--out", str(tmp_path / "r"))) == 2
    assert "at least 2" in capsys.readouterr().err
    (one / "b").mkdir()
    assert main(_train(str(one), "--out", str(tmp_path / "r"))) == 2
    assert "class folder(s) with no images (b)" in capsys.readouterr().err


def test_image_size_below_32(tmp_path, capsys, tiny_data):
    args = _train(str(tiny_data), "--out", str(tmp_path / "r"))
    args[args.index("--image-size") + 1] = "16"
    assert main(args) == 2
    assert "--image-size 16 is too small" in capsys.readouterr().err


def test_weights_of_the_wrong_shape(tmp_path, capsys, tiny_data):
    import keras

    from tl2edge.train.weights import backbone_arrays

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    arrays = backbone_arrays(vgg)
    arrays["block5_conv3/0"] = np.zeros((3, 3, 512, 256), np.float16)
    np.savez(tmp_path / "w.npz", **arrays)
    args = _train(str(tiny_data), "--out", str(tmp_path / "r"))
    args[args.index("--weights") + 1] = str(tmp_path / "w.npz")
    assert main(args) == 2
    assert "block5_conv3/0 has shape (3, 3, 512, 256)" in capsys.readouterr().err


def test_existing_run_dir_and_resume_without_checkpoint(tmp_path, capsys, base_run, tiny_data):
    listing = sorted(p.name for p in base_run.iterdir())
    assert main(_train(str(tiny_data), "--out", str(base_run))) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in base_run.iterdir()) == listing
    (tmp_path / "fresh").mkdir()
    assert main([*_train(str(tiny_data), "--out", str(tmp_path / "fresh")), "--resume"]) == 2
    assert "no resumable run" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--unfreeze-blocks", "6", "between 1 and 5"),
        ("--val-split", "1.5", "between 0 and 1"),
        ("--batch-size", "0", "at least 1"),
        ("--lr-head", "3", "between 0 and 1"),
        ("--block-lr-ratio", "1.5", "in (0, 1]"),
    ],
)
def test_bad_options(tmp_path, capsys, tiny_data, flag, value, message):
    assert main([*_train(str(tiny_data), "--out", str(tmp_path / "r")), flag, value]) == 2
    assert message in capsys.readouterr().err


def test_a_dataset_that_would_not_fit_in_memory_is_refused_up_front(
    tmp_path, capsys, tiny_data, monkeypatch
):
    from tl2edge.train import data

    monkeypatch.setattr(data, "available_memory_bytes", lambda: 50_000)  # 24 images x 3 KB = 74 KB
    args = _train(str(tiny_data), "--out", str(tmp_path / "r"), "--data-pipeline", "memory")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "24 images at 32x32 need" in err and "--data-pipeline stream" in err
    assert not (tmp_path / "r").exists()


def test_a_data_cache_without_room_is_refused_before_training(
    tmp_path, capsys, tiny_data, monkeypatch
):
    import shutil

    from tl2edge.train import cache

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda _: usage._replace(free=1_000))
    cache_dir = tmp_path / "cache"
    args = _train(
        str(tiny_data),
        "--out",
        str(tmp_path / "r"),
        "--data-pipeline",
        "stream",
        "--data-cache",
        str(cache_dir),
    )
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--data-cache {cache_dir}" in err and "only 0.0 MiB is free" in err
    assert not (tmp_path / "r").exists() and list(cache_dir.iterdir()) == []
