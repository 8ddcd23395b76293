"""Load an image folder and feed it through tf.data, from memory or streamed from disk.

Images are decoded with `tl2edge.images.decode_rgb`, the function the server uses too, so
training and serving see the same pixels. Two pipelines (`--data-pipeline`):
- memory: decoded once into uint8 arrays, which are the cache: an epoch never decodes a file
  again (a 224x224 image takes 150 KB, so 24 GB hold ~150k);
- stream: for data larger than memory; every file is checked and fingerprinted up front
  (decoded, not kept; with `--data-cache`, files that decoded in an earlier run are only
  read and hashed), then each epoch reads and decodes the files in parallel in tf.data,
  with the same shuffling as the memory path, so the batches are the same for a seed.
`auto` (the default) streams only when the decoded images would not fit in 70 % of RAM.
A streamed split can be decoded once into a memory-mapped file instead (`--data-cache`,
`tl2edge.train.cache`); its batches are the same too.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

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


PIPELINES = ("auto", "memory", "stream")
MEMORY_FRACTION = 0.7
CHUNK = 256  # files read and decoded per step of `parallel_chunks`
THREADS = os.cpu_count() or 1  # threads of `parallel_chunks`
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Split:
    x: np.ndarray | None  # uint8 [N, S, S, 3]; None when streamed from `paths`
    y: np.ndarray  # int32 [N]
    paths: list[str]  # relative to `root`, '/'-separated (what split.json records)
    image_size: int = 0
    root: str = ""  # the folder the paths are relative to (streamed splits read from it)
    digests: list[bytes] = field(default_factory=list)  # sha256 of each file, when read
    cache: str = ""  # a streamed split's decoded pixels, a .npy file (tl2edge.train.cache)

    def files(self) -> list[str]:
        """Absolute paths of the images, in order."""
        return [str(Path(self.root) / p) for p in self.paths]

    def fingerprint(self) -> str:
        """sha256 over (relative path, sha256 of the bytes) of this split's files, in order."""
        if len(self.digests) != len(self.paths):
            raise ValueError("the split's files were not read, so it has no fingerprint")
        fp = Fingerprint()
        for path, digest in zip(self.paths, self.digests, strict=True):
            fp.add_digest(path, digest)
        return fp.hexdigest()

    def rows(self) -> np.ndarray:
        """The cached pixels, memory-mapped read-only (uint8 [N, S, S, 3])."""
        return np.load(self.cache, mmap_mode="r")

    def pixels(self, indices: np.ndarray) -> np.ndarray:
        """The images at `indices`, uint8 [n, S, S, 3]: from memory, from the cache file, or
        decoded from disk when the split is streamed."""
        if self.x is not None:
            return self.x[indices]
        if self.cache:
            return np.asarray(self.rows()[np.asarray(indices, np.int64)])
        files, size = self.files(), self.image_size
        decoded = [decode_rgb(files[i], size) for i in indices]
        return np.stack(decoded) if decoded else np.zeros((0, size, size, 3), np.uint8)

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
            + (
                ", in memory"
                if self.train.x is not None
                else f", cached in {Path(self.train.cache).parent}"
                if self.train.cache
                else ", streamed from disk"
            )
        )


def parallel_chunks(fn: Callable[[T], R], items: Sequence[T], desc: str) -> Iterator[list[R]]:
    """`fn` over `items` in THREADS threads (Pillow and hashlib release the GIL), CHUNK items at
    a time, so at most one chunk of results is held; yields each chunk's results in order and
    shows progress."""
    with (
        ThreadPoolExecutor(THREADS) as pool,
        tqdm(total=len(items), desc=desc, unit="img", leave=False, mininterval=1.0) as bar,
    ):
        for start in range(0, len(items), CHUNK):
            results = list(pool.map(fn, items[start : start + CHUNK]))
            bar.update(len(results))
            yield results


def _decode_folder(
    folder: ImageFolder,
    size: int,
    desc: str,
    fingerprint: Fingerprint,
    *,
    keep: bool = True,
    checked: Collection[bytes] = frozenset(),
):
    """Read, fingerprint and decode every file of `folder` (in parallel threads, results in
    order). keep=False checks without keeping pixels; it skips decoding the files whose
    sha256 is in `checked` (they decoded before: `tl2edge.train.cache.checked_digests`)."""

    def read(path: Path) -> tuple[bytes | None, np.ndarray | None, str]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            return None, None, str(exc)
        digest = hashlib.sha256(data).digest()
        if not keep and digest in checked:
            return digest, None, ""
        try:
            return digest, decode_rgb(data, size), ""
        except BadImage as exc:
            return digest, None, str(exc)

    xs, ys, paths, digests, bad = [], [], [], [], []
    results = (
        r for chunk in parallel_chunks(read, [p for p, _ in folder.files], desc) for r in chunk
    )
    for (path, label), (digest, pixels, error) in zip(folder.files, results, strict=True):
        if digest is not None:
            fingerprint.add_digest(relative(path, folder.root), digest)
        if error:
            bad.append((str(path), error))
            continue
        if keep:
            xs.append(pixels)
        ys.append(label)
        paths.append(relative(path, folder.root))
        digests.append(digest)
    root = str(folder.root)
    if not keep:
        return Split(None, np.asarray(ys, np.int32), paths, size, root, digests), bad
    x = np.stack(xs) if xs else np.zeros((0, size, size, 3), np.uint8)
    return Split(x, np.asarray(ys, np.int32), paths, size, root, digests), bad


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
        return Split(
            None if split.x is None else split.x[indices],
            split.y[indices],
            [split.paths[i] for i in indices],
            split.image_size,
            split.root,
            [split.digests[i] for i in indices] if split.digests else [],
        )

    return take(train_idx), take(val_idx)


def load_data(
    data_dir: str | Path,
    *,
    image_size: int,
    val_dir: str | Path | None = None,
    val_split: float = 0.2,
    seed: int = 42,
    skip_bad_images: bool = False,
    pipeline: str = "auto",
    checked: Collection[bytes] = frozenset(),
) -> Data:
    """Decode the training (and validation) images, or raise UserError saying what is wrong.

    pipeline: memory (keep the decoded pixels), stream (check and fingerprint every file,
    keep only paths) or auto (memory if it fits in 70 % of the available RAM, else stream).
    checked: sha256 digests of files known to decode; streaming does not decode them again.
    """
    folder = scan_image_folder(data_dir, what="data dir")
    val_folder = scan_image_folder(val_dir, what="--val-dir") if val_dir else None
    if val_folder is not None and val_folder.classes != folder.classes:
        raise UserError(
            f"--val-dir {val_dir} has classes {list(val_folder.classes)} but the data dir has "
            f"{list(folder.classes)}; both need the same class folders"
        )
    n_files = len(folder.files) + (len(val_folder.files) if val_folder else 0)
    keep = choose_pipeline(pipeline, n_files, image_size) == "memory"
    fingerprint = Fingerprint()
    desc = "decoding images" if keep else "checking images (streamed later)"
    everything, bad = _decode_folder(
        folder, image_size, desc, fingerprint, keep=keep, checked=checked
    )
    val_bad: list[tuple[str, str]] = []
    if val_folder is not None:
        val, val_bad = _decode_folder(
            val_folder, image_size, f"{desc}, validation", fingerprint, keep=keep, checked=checked
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
    """Decode the files of a run's saved split (export evaluates on exactly these), in parallel
    threads. When they would not fit in memory, the training images stay on disk (x None,
    absolute paths)."""
    stream = choose_pipeline("auto", len(train_files) + len(val_files), image_size) == "stream"
    decoded, bad = [], []
    for files, desc, relpaths, lazy in (
        (train_files, "decoding training images", split.train, stream),
        (val_files, "decoding validation images", split.val, False),
    ):
        y = np.asarray([label for _, label in files], np.int32)
        if lazy:
            decoded.append(Split(None, y, [str(p) for p, _ in files], image_size))
            continue

        def decode(path: Path) -> tuple[np.ndarray | None, str]:
            try:
                return decode_rgb(path, image_size), ""
            except (BadImage, OSError) as exc:
                return None, str(exc)

        paths = [path for path, _ in files]
        results = [r for chunk in parallel_chunks(decode, paths, desc) for r in chunk]
        bad += [
            (str(path), error) for path, (_, error) in zip(paths, results, strict=True) if error
        ]
        xs = [image for image, _ in results if image is not None]
        x = np.stack(xs) if xs else np.zeros((0, image_size, image_size, 3), np.uint8)
        decoded.append(Split(x, y, [p for p, _ in relpaths], image_size))
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


def choose_pipeline(pipeline: str, n_images: int, image_size: int) -> str:
    """memory or stream; memory is refused before decoding when it would not fit."""
    if pipeline not in PIPELINES:
        raise UserError(f"--data-pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    if pipeline == "stream":
        return "stream"
    need = n_images * image_size * image_size * 3
    available = available_memory_bytes()
    fits = available is None or need <= MEMORY_FRACTION * available
    if pipeline == "auto":
        if not fits:
            log.info(
                "%d decoded images (%.1f GiB) would not fit in memory (%.1f GiB available): "
                "streaming them from disk",
                n_images,
                need / 2**30,
                available / 2**30,
            )
        return "memory" if fits else "stream"
    if not fits:
        raise UserError(
            f"{n_images} images at {image_size}x{image_size} need {need / 2**30:.1f} GiB decoded, "
            f"but only {available / 2**30:.1f} GiB of memory is available (--data-pipeline memory "
            "keeps the decoded images in memory, at most 70 % of it); use --data-pipeline stream "
            "(or auto), a smaller --image-size or fewer images"
        )
    return "memory"


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float] | None:
    """Balanced class weights (n / (k * count)), or None when the classes are balanced."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if counts.min() > 0 and counts.max() / counts.min() <= 1.5:
        return None
    weights = len(y) / (n_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def make_dataset(split: Split, *, batch_size: int, training: bool, seed: int):
    """A tf.data pipeline: shuffle (training), decode (streamed splits), batch, float cast, prefetch.

    Every pipeline shuffles the same N elements with the same seed, so they give the same
    batches; a streamed split decodes each file with decode_rgb in parallel, in order, and a
    cached one gathers each batch's rows from its memory-mapped file.
    """
    import tensorflow as tf

    size = split.image_size
    cached = split.x is None and bool(split.cache)
    if split.x is not None:
        ds = tf.data.Dataset.from_tensor_slices((split.x, split.y))
    elif cached:
        ds = tf.data.Dataset.from_tensor_slices((np.arange(len(split), dtype=np.int64), split.y))
    else:
        ds = tf.data.Dataset.from_tensor_slices((split.files(), split.y))
    if training:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    if cached:
        rows = split.rows()

        def gather(indices):
            return rows[indices]  # fancy indexing copies the batch's rows out of the map

        def load_batch(indices, y):
            x = tf.numpy_function(gather, [indices], tf.uint8, stateful=False)
            return tf.ensure_shape(x, (None, size, size, 3)), y

        # one read per batch, not per image: the per-call cost of numpy_function dominates
        ds = ds.batch(batch_size).map(
            load_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    else:
        if split.x is None:

            def decode(path):
                return decode_rgb(path.decode(), size)

            def load(path, y):
                x = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
                return tf.ensure_shape(x, (size, size, 3)), y

            ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
