"""Image folders and image decoding, shared by training, export and serving.

Every stage decodes with the same function (`decode_rgb`), so the pixels a model sees in
training are the pixels the server feeds it: RGB, uint8, resized with the same filter.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tl2edge.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
RESAMPLE = Image.Resampling.BILINEAR


# What a server decodes from client bytes; other formats Pillow knows (TIFF, PSD, ...) carry
# more attack surface than a classifier needs.
SERVE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")
BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


class BadImage(ValueError):
    """Bytes or a file that are not a decodable image."""


class ImageTooLarge(BadImage):
    """An image whose header declares more pixels than the decoder may allocate."""


def decode_rgb(
    source: bytes | str | os.PathLike, size: int | tuple[int, int] | None = None
) -> np.ndarray:
    """Decode an encoded image (bytes or path) to an RGB uint8 array [H, W, 3].

    Grayscale, palette, RGBA (alpha dropped after compositing on black) and CMYK images
    become RGB; an animated GIF gives its first frame. With `size`, the image is resized
    (bilinear) to size x size or (height, width).
    """
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")  # noqa: SIM115
        with fp, Image.open(fp) as img:
            img.seek(0)
            img.load()
            rgb = _to_rgb(img)
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as exc:
        raise BadImage(f"not a readable image ({exc.__class__.__name__}: {exc})") from exc
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        if rgb.size != (w, h):
            rgb = rgb.resize((w, h), RESAMPLE)
    return np.asarray(rgb, dtype=np.uint8)


def refuse_decompression_bombs() -> None:
    """Make Pillow's DecompressionBombWarning (MAX_IMAGE_PIXELS..2x) an error, as above 2x."""
    import warnings

    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def declared_pixels(data: bytes) -> int:
    """Width x height from an encoded image's header, without decoding; 0 if unreadable
    (`decode_rgb_bounded` then reports why)."""
    try:
        with Image.open(io.BytesIO(data), formats=SERVE_FORMATS) as img:
            return img.width * img.height
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, *BOMBS):
        return 0


def decode_rgb_bounded(
    data: bytes,
    size: tuple[int, int],
    *,
    max_pixels: int,
    reserve: Callable[[int], AbstractContextManager[object]] | None = None,
) -> np.ndarray:
    """`decode_rgb(data, size)` for untrusted bytes, with memory bounded before decoding.

    The pixel count declared in the header is checked against `max_pixels` and Pillow's
    MAX_IMAGE_PIXELS before any pixel is decoded; a JPEG at least twice the target size
    is decoded by its DCT scaling (`draft`) to no less than twice the target, then
    resized with the same filter as `decode_rgb`. `reserve(nbytes)` is entered around the
    decode with the bytes it may take, so a caller can account for (or refuse) them.
    """
    h, w = size
    limit = (
        max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    )
    try:
        with Image.open(io.BytesIO(data), formats=SERVE_FORMATS) as img:
            declared = img.width * img.height
            if declared > limit:
                raise ImageTooLarge(
                    f"image is {img.width}x{img.height} = {declared:,} pixels; the limit is "
                    f"{limit:,} (--max-image-pixels); send it scaled down"
                )
            if img.format == "JPEG" and img.width >= 2 * w and img.height >= 2 * h:
                img.draft("RGB", (2 * w, 2 * h))
            # Grey is resized before it becomes RGB (the same pixels: the filter is linear
            # and per channel), so it costs its frame only; else the frame plus an RGB copy.
            native = img.mode in ("RGB", "L")
            cost = img.width * img.height * (len(img.getbands()) + (0 if native else 4))
            with reserve(cost) if reserve is not None else contextlib.nullcontext():
                img.seek(0)
                img.load()
                rgb = img if native else _to_rgb(img)
                if rgb.size != (w, h):
                    rgb = rgb.resize((w, h), RESAMPLE)
                return np.asarray(rgb.convert("RGB") if rgb.mode != "RGB" else rgb, np.uint8)
    except BOMBS as exc:
        raise ImageTooLarge(f"image too large to decode ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, BadImage):
            raise
        raise BadImage(f"not a readable image ({exc.__class__.__name__}: {exc})") from exc


def unreadable_images_error(bad: list[tuple[str, str]], remedy: str) -> UserError:
    """The error for unreadable files: how many, the first ten by name with the reason, the fix."""
    listing = "\n".join(f"  {p}: {why}" for p, why in bad[:10])
    more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
    return UserError(f"{len(bad)} image file(s) could not be read:\n{listing}{more}\n{remedy}")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def resize_rgb(pixels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 array with the same filter as `decode_rgb`."""
    h, w = (size, size) if isinstance(size, int) else size
    if pixels.shape[:2] == (h, w):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((w, h), RESAMPLE), dtype=np.uint8)


@dataclass(frozen=True)
class ImageFolder:
    """A folder with one sub-folder per class; classes sorted by name (label = index)."""

    root: Path
    classes: tuple[str, ...]
    files: tuple[tuple[Path, int], ...]  # (path, label)

    def counts(self) -> list[int]:
        out = [0] * len(self.classes)
        for _, label in self.files:
            out[label] += 1
        return out


def scan_image_folder(
    root: str | os.PathLike, *, what: str = "data dir", min_classes: int = 2
) -> ImageFolder:
    """List an image folder, or raise UserError naming what is wrong with it."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{what} {root} does not exist")
    if not root.is_dir():
        raise UserError(f"{what} {root} is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not class_dirs:
        hint = f" (found {len(loose)} images directly inside it)" if loose else ""
        raise UserError(
            f"{what} {root} has no class sub-folders{hint}; expected one sub-folder per class, "
            f"e.g. {root}/cat/001.jpg, {root}/dog/002.jpg"
        )
    if len(class_dirs) < min_classes:
        raise UserError(
            f"{what} {root} has {len(class_dirs)} class folder(s) ({', '.join(p.name for p in class_dirs)}); "
            f"a classifier needs at least {min_classes}"
        )
    files: list[tuple[Path, int]] = []
    empty: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(
            p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not images:
            empty.append(class_dir.name)
        files.extend((p, label) for p in images)
    if empty:
        raise UserError(
            f"{what} {root}: class folder(s) with no images ({', '.join(empty)}); "
            f"add images ({'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}) or remove the folder"
        )
    return ImageFolder(root=root, classes=tuple(p.name for p in class_dirs), files=tuple(files))
