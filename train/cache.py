"""An on-disk cache of decoded pixels for streamed splits (`tl2edge train --data-cache DIR`).

A streamed split decodes every file every epoch. With a cache dir, its images are decoded
once (in parallel) into one uint8 .npy file [N, S, S, 3] named from the split's content
fingerprint and the image size; this and later runs on the same files read each batch's
rows from it memory-mapped, so the page cache keeps what fits in RAM and the rest is read
from disk. The shuffle is the one of the other pipelines (over N indices), so the batches
are the same for a seed. `tf.data.Dataset.cache(file)` does not do this: after the shuffle it
freezes the order, before it a full shuffle needs the whole set in the shuffle buffer.

A cache file is written under a temporary name and renamed into place, and one whose size or
header does not match its split is rebuilt, never read. The folder also records the sha256 of
every file it caches (`checked_file`), so a later run's up-front check reads and hashes those
files but does not decode them again. Nothing is deleted automatically (a run says how much
of the folder it does not use); delete the folder, or files in it, at any time.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import math
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tl2edge.errors import UserError
from tl2edge.images import BadImage, decode_rgb
from tl2edge.train.data import Data, Split, parallel_chunks

log = logging.getLogger("tl2edge.train")

# Part of every cache file's name: bump it when decode_rgb's pixels change, so that files
# written by an older version are not used.
CACHE_VERSION = 1
DIGEST = 32  # bytes of a sha256


def checked_file(folder: Path) -> Path:
    """The sha256 digests (32 bytes each) of every file a cached split holds: they decoded,
    so a later run's up-front check of the same files reads and hashes them, but does not
    decode them again."""
    return folder / f"checked-v{CACHE_VERSION}.sha256"


def checked_digests(cache_dir: str | os.PathLike) -> frozenset[bytes]:
    """The digests recorded in `cache_dir` (empty if none or unreadable)."""
    path = checked_file(Path(cache_dir))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return frozenset()
    except OSError as exc:
        log.warning("cannot read %s (%s): every file is decoded in the check", path, exc)
        return frozenset()
    if len(raw) % DIGEST:
        log.warning("%s is damaged (%d bytes): every file is decoded in the check", path, len(raw))
        return frozenset()
    return frozenset(raw[i : i + DIGEST] for i in range(0, len(raw), DIGEST))


def _record_checked(folder: Path, splits: tuple[Split, ...]) -> None:
    known = checked_digests(folder)
    new = {d for split in splits for d in split.digests} - known
    if not new:
        return
    path = checked_file(folder)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as f:
            f.write(b"".join(sorted(known | new)))
        os.replace(tmp, path)
    except OSError as exc:  # the record only saves time: training goes on without it
        tmp.unlink(missing_ok=True)
        log.warning("could not record the checked files in %s (%s)", path, exc)


def cache_data(data: Data, cache_dir: str | os.PathLike) -> Data:
    """`data` with each streamed split read from its cache file in `cache_dir` (built if
    missing or unusable). Splits in memory already hold their pixels and stay as they are.
    The room for every file to build is checked first, so no split is cached without the other."""
    folder = Path(cache_dir)
    build = [
        split
        for split in (data.train, data.val)
        if split.x is None and _problem(cache_file(split, folder), _shape(split)) is not None
    ]
    if build:
        _check_room(
            folder,
            sum(_nbytes(split) for split in build),
            f"{sum(map(len, build))} at {data.train.image_size}x{data.train.image_size}",
        )
    train = cache_split(data.train, cache_dir, what="training")
    val = cache_split(data.val, cache_dir, what="validation")
    _record_checked(folder, (train, val))
    _note_other_files(folder, {Path(train.cache).name, Path(val.cache).name})
    return dataclasses.replace(data, train=train, val=val)


def _note_other_files(folder: Path, used: set[str]) -> None:
    """Say how much of `folder` this run does not use (caches of other data or sizes, files
    left by an interrupted run): nothing is deleted, another run may need them."""
    others = [
        p
        for p in folder.iterdir()
        if p.name.startswith(("pixels-", ".pixels-")) and p.name not in used and p.is_file()
    ]
    if others:
        log.info(
            "%s also holds %d cache file(s) this run does not use (%s): delete them if their "
            "data is gone",
            folder,
            len(others),
            _size(sum(p.stat().st_size for p in others)),
        )


def cache_split(split: Split, cache_dir: str | os.PathLike, *, what: str = "") -> Split:
    """`split` reading its pixels from its cache file (see the module docstring)."""
    if split.x is not None:
        return split
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path, shape = cache_file(split, folder), _shape(split)
    problem = _problem(path, shape)
    if problem is None:
        log.info("%s images: reading the decoded pixels from %s", what or "streamed", path)
        return dataclasses.replace(split, cache=str(path))
    if path.exists():
        log.warning("%s is not a usable cache file (%s): rebuilding it", path, problem)
    _build(split, path, shape, what=what)
    return dataclasses.replace(split, cache=str(path))


def cache_file(split: Split, folder: Path) -> Path:
    """Where `split`'s decoded pixels live in `folder`: the name says what they are."""
    return folder / (
        f"pixels-v{CACHE_VERSION}-{split.image_size}px-{len(split)}-{split.fingerprint()[:32]}.npy"
    )


def _shape(split: Split) -> tuple[int, int, int, int]:
    return (len(split), split.image_size, split.image_size, 3)


def _nbytes(split: Split) -> int:
    """The size of the split's cache file."""
    return len(_header(_shape(split))) + math.prod(_shape(split))


def _check_room(folder: Path, need: int, images: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise UserError(
            f"--data-cache {folder}: the decoded images ({images}) need {_size(need)}, but "
            f"only {_size(free)} is free there; free some space, point --data-cache at a "
            "bigger disk, or drop it (the images are then decoded every epoch)"
        )


def _header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf,
        {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
            "fortran_order": False,
            "shape": shape,
        },
    )
    return buf.getvalue()


def _problem(path: Path, shape: tuple[int, ...]) -> str | None:
    """Why the file at `path` cannot be read as uint8 pixels of `shape`, or None if it can."""
    if not path.exists():
        return "missing"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version != (1, 0):
                return f".npy format {version}, expected (1, 0)"
            got, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            offset = f.tell()
        size = path.stat().st_size
    except (OSError, ValueError) as exc:
        return f"unreadable header: {exc}"
    if got != shape or fortran_order or dtype != np.uint8:
        return f"it holds {dtype} {got}, expected uint8 {shape}"
    expected = offset + math.prod(shape)
    if size != expected:
        return f"{size} bytes, expected {expected}: truncated or grown"
    return None


def _build(split: Split, path: Path, shape: tuple[int, ...], *, what: str) -> None:
    header = _header(shape)
    need = len(header) + math.prod(shape)
    _check_room(
        path.parent, need, f"{what + ' ' if what else ''}{shape[0]} at {shape[1]}x{shape[2]}"
    )
    # not mkstemp: its files are private (0600), and a cache dir may be shared
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as f:
            f.write(header)
            for rows in _decoded(split, f"caching {what or 'streamed'} images"):
                f.write(rows.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise UserError(
                f"--data-cache {path.parent} ran out of space while writing {_size(need)} of "
                "decoded images (nothing was kept); free some space, point --data-cache at a "
                "bigger disk, or drop it"
            ) from exc
        raise
    log.info("cached %d decoded images in %s (%s)", shape[0], path, _size(need))


def _decoded(split: Split, desc: str) -> Iterator[np.ndarray]:
    """The split's images decoded in parallel threads, in order, CHUNK at a time."""
    size = split.image_size

    def decode(path: str) -> np.ndarray:
        try:
            return decode_rgb(path, size)
        except BadImage as exc:
            raise UserError(
                f"{path} was readable when the data was checked but not now ({exc}); "
                "was the data dir changed during the run?"
            ) from exc

    for rows in parallel_chunks(decode, split.files(), desc):
        yield np.stack(rows)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
