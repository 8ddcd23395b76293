"""The built-in synthetic data: procedural images of shapes and textures.

Tasks (the target's classes appear in no other task):
- `source`: ten classes of basic shapes and textures, many images; the first stage of the
  shipped VGG16 backbone's pretraining.
- `target`: five other classes built from the same visual vocabulary (edges, corners,
  curves, periodic textures), few images per class; the task the demo fine-tunes on, so
  that features learned on the source task visibly help.
- `procedural`: a richer pretraining source of 53 classes: the source task's ten, 32 iterated
  function systems (one fractal per class, as in FractalDB), filtered noise (1/f spectra,
  frequency bands, an oriented spectrum), Gabor gratings (single, plaid, a field of small
  ones, rings) and dead-leaves images of discs or squares. Still no glyphs. The second
  stage of the shipped backbone's pretraining.
- `glyphs`: ten digits and letters drawn in the DejaVu fonts that ship with matplotlib
  (sans, serif and mono, four styles each), with random size, position, rotation, stroke,
  colours and blur: a far-domain task, unlike anything in the source task, to check that
  transfer still holds when the target data does not look like the source.

Every image has a textured, coloured background (gradient plus low-frequency noise), a
foreground of random colour with enough contrast, random scale, position and rotation,
and pixel noise. Images are rendered at 4x and downsampled, so edges are anti-aliased.
The same (task, seed, class, index) always gives the same pixels.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from tl2edge.errors import UserError
from tl2edge.fsutil import atomic_dir

SUPERSAMPLE = 4
Draw = Callable[
    [ImageDraw.ImageDraw, np.random.Generator, float, tuple[float, float], tuple[int, int, int]],
    None,
]


def _rotated(
    points: list[tuple[float, float]], angle: float, centre: tuple[float, float], scale: float
):
    ca, sa = math.cos(angle), math.sin(angle)
    cx, cy = centre
    return [(cx + scale * (x * ca - y * sa), cy + scale * (x * sa + y * ca)) for x, y in points]


def _regular(n: int, r: float = 1.0, phase: float = 0.0) -> list[tuple[float, float]]:
    return [
        (r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _polygon(points: list[tuple[float, float]], max_angle: float = math.pi) -> Draw:
    def draw(d, rng, scale, centre, colour):
        d.polygon(_rotated(points, rng.uniform(-max_angle, max_angle), centre, scale), fill=colour)

    return draw


def _circle(d, rng, scale, centre, colour):
    cx, cy = centre
    d.ellipse([cx - scale, cy - scale, cx + scale, cy + scale], fill=colour)


def _ring(d, rng, scale, centre, colour):
    cx, cy = centre
    d.ellipse(
        [cx - scale, cy - scale, cx + scale, cy + scale],
        outline=colour,
        width=max(2, int(scale * 0.3)),
    )


def _cross(d, rng, scale, centre, colour):
    w = 0.3
    arm = [(-1, -w), (1, -w), (1, w), (-1, w)]
    angle = rng.uniform(-math.pi / 4, math.pi / 4)
    d.polygon(_rotated(arm, angle, centre, scale), fill=colour)
    d.polygon(_rotated(arm, angle + math.pi / 2, centre, scale), fill=colour)


def _crescent(d, rng, scale, centre, colour, background=None):
    cx, cy = centre
    img = Image.new("L", d.im.size, 0)
    md = ImageDraw.Draw(img)
    md.ellipse([cx - scale, cy - scale, cx + scale, cy + scale], fill=255)
    angle = rng.uniform(0, 2 * math.pi)
    ox, oy = cx + 0.45 * scale * math.cos(angle), cy + 0.45 * scale * math.sin(angle)
    md.ellipse([ox - 0.85 * scale, oy - 0.85 * scale, ox + 0.85 * scale, oy + 0.85 * scale], fill=0)
    d.bitmap((0, 0), img, fill=colour)


def _texture(kind: str) -> Draw:
    def draw(d, rng, scale, centre, colour):
        cx, cy = centre
        size = d.im.size[0]
        period = rng.uniform(0.18, 0.3) * scale * 2
        half = scale
        box = (cx - half, cy - half, cx + half, cy + half)
        angle = rng.uniform(0, math.pi)
        mask = Image.new("L", (size, size), 0)
        md = ImageDraw.Draw(mask)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        u = (xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)
        v = -(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)
        if kind == "stripes":
            on = (u / period) % 1.0 < 0.5
        elif kind == "checker":
            on = ((u // period) + (v // period)) % 2 == 0
        elif kind == "dots":
            du, dv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
            on = du * du + dv * dv < 0.09
        elif kind == "zigzag":
            on = ((u / period + np.abs(((v / period) % 1.0) - 0.5)) % 1.0) < 0.45
        else:  # pragma: no cover - table below is the only caller
            raise ValueError(kind)
        md.rectangle(box, fill=255)
        region = np.asarray(mask) > 0
        d.bitmap((0, 0), Image.fromarray(((on & region) * 255).astype(np.uint8)), fill=colour)

    return draw


_STAR = [
    (
        math.cos(math.pi / 2 + k * math.pi / 5) * (1.0 if k % 2 == 0 else 0.45),
        -math.sin(math.pi / 2 + k * math.pi / 5) * (1.0 if k % 2 == 0 else 0.45),
    )
    for k in range(10)
]
_ARROW = [(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)]
_HOURGLASS = [(-0.8, -1), (0.8, -1), (0.1, 0), (0.8, 1), (-0.8, 1), (-0.1, 0)]

# Fixed file names, not a directory listing, so that the same seed draws the same fonts
# whatever else a matplotlib release adds to its font folder.
GLYPH_FONTS = tuple(
    f"DejaVu{family}{style}.ttf"
    for family in ("Sans", "Serif", "SansMono")
    for style in (
        ("", "-Bold", "-Italic", "-BoldItalic")
        if family == "Serif"
        else ("", "-Bold", "-Oblique", "-BoldOblique")
    )
)
GLYPHS = "2347AEHKRX"


def _font_dir() -> Path:
    try:
        import matplotlib  # only for its bundled fonts; imported here, not by the core
    except ImportError as e:
        raise UserError(
            "the glyphs task draws with the DejaVu fonts that come with matplotlib; "
            "install it with `pip install 'tl2edge[train]'` (or `pip install matplotlib`)"
        ) from e
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=256)
def _font(name: str, pixels: int) -> ImageFont.FreeTypeFont:
    path = _font_dir() / name
    if not path.is_file():
        raise UserError(f"font {path} is missing from the matplotlib installation")
    return ImageFont.truetype(str(path), pixels)


def _glyph(char: str) -> Draw:
    def draw(d, rng, scale, centre, colour):
        size = d.im.size[0]
        font = _font(GLYPH_FONTS[int(rng.integers(len(GLYPH_FONTS)))], int(scale * 2.2))
        stroke = int(rng.integers(0, max(1, int(scale * 0.12)) + 1))
        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).text(
            centre, char, font=font, fill=255, anchor="mm", stroke_width=stroke, stroke_fill=255
        )
        mask = mask.rotate(
            float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR, center=centre
        )
        mask = mask.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.08)) * scale))
        d.bitmap((0, 0), mask, fill=colour)

    return draw


# The richer pretraining source (`procedural`): formula-driven and noise images in the spirit
# of FractalDB (one class per iterated function system) and of pretraining on procedural noise
# and dead-leaves images, plus the basic shapes and textures. Still no glyphs.
PROCEDURAL_FRACTALS = 32


def _affine(rng: np.random.Generator) -> np.ndarray:
    """A random contraction x -> A x + t as a 2x3 matrix (A = rotation . scales . rotation)."""

    def rot(a):
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

    scales = np.diag(rng.uniform(0.25, 0.85, 2) * rng.choice([-1.0, 1.0], 2))
    a = rot(rng.uniform(0, 2 * math.pi)) @ scales @ rot(rng.uniform(0, 2 * math.pi))
    return np.hstack([a, rng.uniform(-1, 1, (2, 1))])


def _chaos_game(maps: np.ndarray, rng: np.random.Generator, points: int = 4096) -> np.ndarray:
    """Points of the attractor of the IFS `maps` [n, 2, 3] (maps drawn by |det| weight)."""
    weights = np.abs(np.linalg.det(maps[:, :, :2])) + 0.02
    weights = weights / weights.sum()
    xy = rng.uniform(-1, 1, (points, 2))
    out = []
    for step in range(24):
        m = maps[rng.choice(len(maps), points, p=weights)]
        xy = np.einsum("nij,nj->ni", m[:, :, :2], xy) + m[:, :, 2]
        if step >= 8:
            out.append(xy)
    return np.concatenate(out)


@functools.cache
def _ifs_class(k: int) -> np.ndarray:
    """The IFS of fractal class k: fixed by k alone, redrawn until its attractor fills space."""
    rng = np.random.default_rng([2020, k])
    while True:
        maps = np.stack([_affine(rng) for _ in range(int(rng.integers(2, 5)))])
        xy = _chaos_game(maps, np.random.default_rng([2020, k, 1]), 2048)
        span = np.percentile(xy, 99, axis=0) - np.percentile(xy, 1, axis=0)
        if np.all(span > 1e-3):
            xy = (xy - np.percentile(xy, 1, axis=0)) / span
            cells = np.unique(np.clip((xy * 16).astype(int), 0, 15), axis=0)
            if 0.12 < len(cells) / 256 < 0.7:  # neither a thin curve nor a filled blob
                return maps


def _fractal(k: int) -> Draw:
    def draw(d, rng, scale, centre, colour):
        size = d.im.size[0]
        maps = _ifs_class(k) * rng.uniform(0.92, 1.08, (len(_ifs_class(k)), 2, 3))
        xy = _chaos_game(maps, rng)
        lo, hi = np.percentile(xy, 0.5, axis=0), np.percentile(xy, 99.5, axis=0)
        xy = (xy - (lo + hi) / 2) / (np.max(hi - lo) / 2 + 1e-6)
        angle = rng.uniform(0, 2 * math.pi)
        flip = rng.choice([-1.0, 1.0])
        rotm = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        xy = (xy * [flip, 1.0]) @ rotm.T * scale * 1.1 + centre
        ij = np.round(xy).astype(int)
        ij = ij[(ij >= 0).all(axis=1) & (ij < size).all(axis=1)]
        counts = np.zeros((size, size), np.float32)
        np.add.at(counts, (ij[:, 1], ij[:, 0]), 1.0)
        level = np.log1p(counts) / max(np.log1p(np.percentile(counts[counts > 0], 90)), 1e-6)
        mask = Image.fromarray((np.clip(level, 0, 1) * 255).astype(np.uint8))
        d.bitmap((0, 0), mask.filter(ImageFilter.MaxFilter(3)), fill=colour)

    return draw


def _soft_region(size: int, scale: float, centre: tuple[float, float]) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(xs - centre[0], ys - centre[1]) / (scale * 1.3)
    return np.clip((1.0 - r) * 4.0, 0.0, 1.0)


def _paint(d, field: np.ndarray, region: np.ndarray, colour) -> None:
    lo, hi = np.percentile(field, [2, 98])
    level = np.clip((field - lo) / (hi - lo + 1e-6), 0, 1) * region
    d.bitmap((0, 0), Image.fromarray((level * 255).astype(np.uint8)), fill=colour)


def _noise(kind: str) -> Draw:
    """Filtered white noise: 1/f^a spectra, band-pass bands, or an oriented spectrum."""

    def draw(d, rng, scale, centre, colour):
        size = d.im.size[0]
        fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
        f = np.hypot(fx, fy) + 1.0 / size
        if kind.startswith("spectrum"):
            gain = f ** -float(kind.split("-")[1])
        elif kind == "band-low":
            gain = np.exp(-(((f - rng.uniform(0.015, 0.03)) / 0.008) ** 2))
        elif kind == "band-high":
            gain = np.exp(-(((f - rng.uniform(0.06, 0.1)) / 0.015) ** 2))
        elif kind == "oriented":
            theta = rng.uniform(0, math.pi)
            off = np.angle(np.exp(2j * (np.arctan2(fy, fx) - theta))) / 2
            gain = f**-1.5 * np.exp(-((off / 0.15) ** 2))
        else:  # pragma: no cover - table below is the only caller
            raise ValueError(kind)
        field = np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * gain).real
        _paint(d, field, _soft_region(size, scale, centre), colour)

    return draw


def _gabor(kind: str) -> Draw:
    """Gratings under Gaussian envelopes: one, a plaid of two, a field of small ones, rings."""

    def draw(d, rng, scale, centre, colour):
        size = d.im.size[0]
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)

        def grating(cx, cy, theta, period, sigma):
            u = (xs - cx) * math.cos(theta) + (ys - cy) * math.sin(theta)
            envelope = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
            return np.cos(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi)) * envelope

        period = rng.uniform(0.25, 0.45) * scale
        theta = rng.uniform(0, math.pi)
        if kind == "single":
            field = grating(*centre, theta, period, scale * 0.6)
        elif kind == "plaid":
            field = grating(*centre, theta, period, scale * 0.6) + grating(
                *centre, theta + rng.uniform(math.pi / 3, 2 * math.pi / 3), period, scale * 0.6
            )
        elif kind == "field":
            field = np.zeros((size, size), np.float32)
            for _ in range(int(rng.integers(6, 12))):
                cx, cy = np.asarray(centre) + rng.uniform(-1, 1, 2) * scale
                field += grating(cx, cy, rng.uniform(0, math.pi), period * 0.5, scale * 0.18)
        elif kind == "rings":
            r = np.hypot(xs - centre[0], ys - centre[1])
            field = np.cos(2 * math.pi * r / period) * np.exp(-(r**2) / (2 * (scale * 0.6) ** 2))
        else:  # pragma: no cover - table below is the only caller
            raise ValueError(kind)
        _paint(d, field, np.ones_like(field), colour)

    return draw


def _dead_leaves(shape: str) -> Draw:
    """Occluding discs or squares with power-law sizes, each at its own shade."""

    def draw(d, rng, scale, centre, colour):
        size = d.im.size[0]
        level = Image.new("L", (size, size), 0)
        ld = ImageDraw.Draw(level)
        for _ in range(int(rng.integers(40, 90))):
            r = scale * 0.5 * rng.uniform(0.08, 1.0) ** 2 + 2
            cx, cy = np.asarray(centre) + rng.uniform(-1, 1, 2) * scale
            shade = int(rng.integers(40, 256))
            if shape == "discs":
                ld.ellipse([cx - r, cy - r, cx + r, cy + r], fill=shade)
            else:
                ld.polygon(
                    _rotated(_regular(4, r, math.pi / 4), rng.uniform(0, 2), (cx, cy), 1),
                    fill=shade,
                )
        field = np.asarray(level, np.float32) * _soft_region(size, scale, centre)
        d.bitmap((0, 0), Image.fromarray(field.astype(np.uint8)), fill=colour)

    return draw


TASKS: dict[str, dict[str, Draw]] = {
    "source": {
        "circle": _circle,
        "square": _polygon(_regular(4, 1.0, math.pi / 4), math.pi / 4),
        "triangle": _polygon(_regular(3, 1.1, -math.pi / 2), math.pi / 6),
        "cross": _cross,
        "ring": _ring,
        "star": _polygon(_STAR, math.pi / 5),
        "stripes": _texture("stripes"),
        "checker": _texture("checker"),
        "dots": _texture("dots"),
        "diamond": _polygon([(0, -1.1), (0.6, 0), (0, 1.1), (-0.6, 0)], math.pi / 8),
    },
    "target": {
        "hexagon": _polygon(_regular(6, 1.0), math.pi / 6),
        "crescent": _crescent,
        "arrow": _polygon(_ARROW, math.pi),
        "hourglass": _polygon(_HOURGLASS, math.pi / 8),
        "zigzag": _texture("zigzag"),
    },
    "glyphs": {c: _glyph(c) for c in GLYPHS},
}
TASKS["procedural"] = {
    **TASKS["source"],
    **{f"fractal{k:02d}": _fractal(k) for k in range(PROCEDURAL_FRACTALS)},
    **{
        f"noise-{kind}": _noise(kind)
        for kind in ("spectrum-1", "spectrum-2", "band-low", "band-high", "oriented")
    },
    **{f"gabor-{kind}": _gabor(kind) for kind in ("single", "plaid", "field", "rings")},
    **{f"leaves-{shape}": _dead_leaves(shape) for shape in ("discs", "squares")},
}


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    base = rng.uniform(0, 255, 3)
    ramp = rng.uniform(-60, 60, 3)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (xs * math.cos(angle) + ys * math.sin(angle))[..., None]
    coarse = rng.normal(0, 18, (5, 5, 3))
    noise = (
        np.asarray(
            Image.fromarray(
                ((coarse - coarse.min()) / (np.ptp(coarse) + 1e-6) * 255).astype(np.uint8)
            ).resize((size, size), Image.Resampling.BICUBIC),
            dtype=np.float32,
        )
        / 255.0
        * np.ptp(coarse)
        + coarse.min()
    )
    img = np.clip(base + ramp * (t - 0.5) + noise, 0, 255)
    return img, float(img.mean())


def _foreground_colour(rng: np.random.Generator, background_mean: float) -> tuple[int, int, int]:
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if abs(float(colour.mean()) - background_mean) > 60:
            break
    else:
        colour = np.full(3, 255 if background_mean < 128 else 0)
    return tuple(int(c) for c in colour)


def render(task: str, class_name: str, index: int, *, size: int = 64, seed: int = 0) -> np.ndarray:
    """One image, RGB uint8 [size, size, 3], fully determined by the arguments."""
    classes = list(TASKS[task])
    rng = np.random.default_rng([seed, list(TASKS).index(task), classes.index(class_name), index])
    big = size * SUPERSAMPLE
    background, mean = _background(rng, big)
    canvas = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    scale = rng.uniform(0.25, 0.4) * big
    centre = tuple(big / 2 + rng.uniform(-0.12, 0.12, 2) * big)
    TASKS[task][class_name](draw, rng, scale, centre, _foreground_colour(rng, mean))
    small = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    small += rng.normal(0, rng.uniform(3, 10), small.shape)
    return np.clip(small, 0, 255).astype(np.uint8)


def iter_dataset(
    task: str, *, per_class: int, size: int, seed: int, classes: int | None = None
) -> Iterator[tuple[str, int, np.ndarray]]:
    names = list(TASKS[task])[: classes or None]
    for name in names:
        for i in range(per_class):
            yield name, i, render(task, name, i, size=size, seed=seed)


def write_dataset(
    out: str | os.PathLike,
    *,
    task: str = "target",
    per_class: int = 20,
    size: int = 64,
    seed: int = 0,
    classes: int | None = None,
    image_format: str = "png",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write an image folder OUT/<class>/<class>_NNNN.<ext>. Atomic: all or nothing."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    available = len(TASKS[task])
    if classes is not None and not 2 <= classes <= available:
        raise UserError(
            f"--classes must be between 2 and {available} for the {task} task, got {classes}"
        )
    if per_class < 1:
        raise UserError(f"--per-class must be at least 1, got {per_class}")
    if size < 8:
        raise UserError(f"--size must be at least 8 pixels, got {size}")
    if image_format not in ("png", "jpg"):
        raise UserError(f"--format must be png or jpg, got {image_format!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
    # The check above refuses a non-empty folder; an empty one is simply replaced.
    with atomic_dir(out, overwrite=True) as tmp:
        items = iter_dataset(task, per_class=per_class, size=size, seed=seed, classes=classes)
        total = per_class * (classes or available)
        if progress:
            from tqdm import tqdm

            items = tqdm(items, total=total, desc=f"synth {task}", unit="img", leave=False)
        for name, i, pixels in items:
            folder = tmp / name
            folder.mkdir(exist_ok=True)
            path = folder / f"{name}_{i:04d}.{image_format}"
            if image_format == "png":
                Image.fromarray(pixels).save(path, format="PNG")
            else:
                Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return out
