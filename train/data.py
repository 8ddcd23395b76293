"""Load an image folder into memory (decoded once, uint8) and feed it through tf.data.

Images are decoded with `tl2edge.images.decode_rgb`, the function the server uses too, so
training and serving see the same pixels. The decoded uint8 arrays are the cache: an
epoch never decodes a file again (a 224x224 image takes 150 KB, so 24 GB hold ~150k).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tl2edge.errors import UserError
from tl2edge.images import (
    BadImage,
    ImageFolder,
    decode_rgb,
    scan_image_folder,
    unreadable_images_error,
)
from tl2edge.rundir import Fingerprint, SavedSplit, relative

log = logging.getLogger("tl2edge.train")


@dataclass
class Split:
    x: np.ndarray  # uint8 [N, S, S, 3]
    y: np.ndarray  # int32 [N]
    paths: list[str]  # relative to the folder the split was read from, '/'-separated

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    classes: tuple[str, ...]
    train: Split
    val: Split
    fingerprint: str
    bad_images: list[tuple[str, str]] = field(default_factory=list)

    def saved_split(self) -> SavedSplit:
        """What the run dir records of this split (split.json)."""
        return SavedSplit(
            classes=self.classes,
            train=tuple(zip(self.train.paths, map(int, self.train.y), strict=True)),
            val=tuple(zip(self.val.paths, map(int, self.val.y), strict=True)),
            fingerprint=self.fingerprint,
        )

    def summary(self) -> str:
        return (
            f"{len(self.classes)} classes, {len(self.train)} training and {len(self.val)} validation images"
            + (f", {len(self.bad_images)} unreadable skipped" if self.bad_images else "")
        )


def _decode_folder(folder: ImageFolder, size: int, desc: str, fingerprint: Fingerprint):
    xs, ys, paths, bad = [], [], [], []
    for path, label in tqdm(folder.files, desc=desc, unit="img", leave=False, mininterval=1.0):
        try:
            data = path.read_bytes()
        except OSError as exc:
            bad.append((str(path), str(exc)))
            continue
        fingerprint.add(relative(path, folder.root), data)
        try:
            pixels = decode_rgb(data, size)
        except BadImage as exc:
            bad.append((str(path), str(exc)))
            continue
        xs.append(pixels)
        ys.append(label)
        paths.append(relative(path, folder.root))
    x = np.stack(xs) if xs else np.zeros((0, size, size, 3), np.uint8)
    return Split(x, np.asarray(ys, np.int32), paths), bad


def _stratified_split(
    split: Split, n_classes: int, fraction: float, seed: int
) -> tuple[Split, Split]:
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in range(n_classes):
        idx = np.flatnonzero(split.y == label)
        rng.shuffle(idx)
        n_val = round(len(idx) * fraction)
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])

    def take(indices) -> Split:
        indices = np.sort(np.asarray(indices, dtype=np.int64))
        return Split(split.x[indices], split.y[indices], [split.paths[i] for i in indices])

    return take(train_idx), take(val_idx)


def load_data(
    data_dir: str | Path,
    *,
    image_size: int,
    val_dir: str | Path | None = None,
    val_split: float = 0.2,
    seed: int = 42,
    skip_bad_images: bool = False,
) -> Data:
    """Decode the training (and validation) images, or raise UserError saying what is wrong."""
    folder = scan_image_folder(data_dir, what="data dir")
    val_folder = scan_image_folder(val_dir, what="--val-dir") if val_dir else None
    if val_folder is not None and val_folder.classes != folder.classes:
        raise UserError(
            f"--val-dir {val_dir} has classes {list(val_folder.classes)} but the data dir has "
            f"{list(folder.classes)}; both need the same class folders"
        )
    n_files = len(folder.files) + (len(val_folder.files) if val_folder else 0)
    _check_memory(n_files, image_size)
    fingerprint = Fingerprint()
    everything, bad = _decode_folder(folder, image_size, "decoding images", fingerprint)
    val_bad: list[tuple[str, str]] = []
    if val_folder is not None:
        val, val_bad = _decode_folder(
            val_folder, image_size, "decoding validation images", fingerprint
        )
    bad += val_bad
    if bad and not skip_bad_images:
        raise unreadable_images_error(
            bad,
            "Fix or remove them, or pass --skip-bad-images to train without them "
            "(they are counted in the report).",
        )
    for p, why in bad:
        log.warning("skipping unreadable image %s (%s)", p, why)
    counts = np.bincount(everything.y, minlength=len(folder.classes))
    empty = [folder.classes[i] for i, c in enumerate(counts) if c == 0]
    if empty:
        raise UserError(f"class folder(s) with no readable images: {', '.join(empty)}")
    if val_folder is None:
        train, val = _stratified_split(everything, len(folder.classes), val_split, seed)
    else:
        train = everything
    if len(val) == 0:
        raise UserError(
            "no validation images: every class has a single image; add images or pass --val-dir"
        )
    return Data(folder.classes, train, val, fingerprint.hexdigest(), bad)


def load_saved_split(
    split: SavedSplit,
    train_files: list[tuple[Path, int]],
    val_files: list[tuple[Path, int]],
    *,
    image_size: int,
) -> Data:
    """Decode the files of a run's saved split (export evaluates on exactly these)."""
    _check_memory(len(train_files) + len(val_files), image_size)
    decoded, bad = [], []
    for files, desc, relpaths in (
        (train_files, "decoding training images", split.train),
        (val_files, "decoding validation images", split.val),
    ):
        xs = []
        for path, _ in tqdm(files, desc=desc, unit="img", leave=False, mininterval=1.0):
            try:
                xs.append(decode_rgb(path, image_size))
            except (BadImage, OSError) as exc:
                bad.append((str(path), str(exc)))
        x = np.stack(xs) if xs else np.zeros((0, image_size, image_size, 3), np.uint8)
        y = np.asarray([label for _, label in files], np.int32)
        decoded.append(Split(x, y, [p for p, _ in relpaths]))
    if bad:
        raise unreadable_images_error(
            bad, "The run's saved split lists them; restore the data dir as it was for training."
        )
    return Data(split.classes, decoded[0], decoded[1], split.fingerprint)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (unknown: no check)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _check_memory(n_images: int, image_size: int) -> None:
    """Refuse before decoding when the decoded images would not fit in memory."""
    need = n_images * image_size * image_size * 3
    available = available_memory_bytes()
    if available is not None and need > 0.7 * available:
        raise UserError(
            f"{n_images} images at {image_size}x{image_size} need {need / 2**30:.1f} GiB decoded, "
            f"but only {available / 2**30:.1f} GiB of memory is available (tl2edge keeps the decoded "
            "images in memory, at most 70 % of it); use a smaller --image-size or fewer images"
        )


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float] | None:
    """Balanced class weights (n / (k * count)), or None when the classes are balanced."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if counts.min() > 0 and counts.max() / counts.min() <= 1.5:
        return None
    weights = len(y) / (n_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def make_dataset(split: Split, *, batch_size: int, training: bool, seed: int):
    """A tf.data pipeline over decoded arrays: shuffle (training), batch, float cast, prefetch."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y))
    if training:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
