"""The synthetic data generator and image decoding. Run: .venv/bin/pytest tests/core -q"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tl2edge.errors import UserError
from tl2edge.images import BadImage, decode_rgb, scan_image_folder
from tl2edge.synth import TASKS, render, write_dataset


def test_render_is_deterministic_and_seed_dependent():
    a = render("source", "circle", 3, size=32, seed=7)
    b = render("source", "circle", 3, size=32, seed=7)
    c = render("source", "circle", 3, size=32, seed=8)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_tasks_have_disjoint_classes():
    assert len(TASKS["source"]) > len(TASKS["target"]) >= 2
    assert not set(TASKS["source"]) & set(TASKS["target"])


def test_classes_differ_on_average():
    # The class signal must be in the foreground, not in a shared background.
    means = {
        name: np.mean([render("target", name, i, size=32).astype(float) for i in range(8)], axis=0)
        for name in TASKS["target"]
    }
    names = list(means)
    assert all(np.abs(means[a] - means[b]).mean() > 1.0 for a in names for b in names if a < b)


def test_write_dataset_is_byte_identical_for_a_seed(tmp_path):
    a = write_dataset(tmp_path / "a", task="target", per_class=3, size=32, seed=1, progress=False)
    b = write_dataset(tmp_path / "b", task="target", per_class=3, size=32, seed=1, progress=False)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files_a) == 3 * len(TASKS["target"])
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def test_write_dataset_refuses_to_overwrite(tmp_path):
    out = write_dataset(tmp_path / "d", task="target", per_class=1, size=16, progress=False)
    before = sorted(out.rglob("*"))
    with pytest.raises(UserError, match="--overwrite"):
        write_dataset(out, task="target", per_class=2, size=16, progress=False)
    assert sorted(out.rglob("*")) == before


# Every (format, mode) pair that the format can store.
ENCODABLE = [("PNG", m) for m in ("L", "RGBA", "P", "1", "LA")] + [
    ("BMP", m) for m in ("L", "P", "1")
]
ENCODABLE += [("GIF", m) for m in ("L", "P", "1")] + [("JPEG", m) for m in ("L", "CMYK")]


@pytest.mark.parametrize(("fmt", "mode"), ENCODABLE)
def test_decode_converts_every_mode_to_rgb(fmt, mode):
    img = Image.new("RGB", (20, 10), (200, 30, 40)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    out = decode_rgb(buf.getvalue(), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_decode_keeps_colour_order_rgb():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format="PNG")
    assert tuple(decode_rgb(buf.getvalue())[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_decode_rejects_garbage(data):
    with pytest.raises(BadImage):
        decode_rgb(data)


def test_truncated_jpeg_is_rejected():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buf, format="JPEG"
    )
    with pytest.raises(BadImage):
        decode_rgb(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_scan_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_image_folder(tmp_path / "missing")
    with pytest.raises(UserError, match="no class sub-folders"):
        scan_image_folder(tmp_path)
    (tmp_path / "only").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "only" / "a.png")
    with pytest.raises(UserError, match="at least 2"):
        scan_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no images.*empty"):
        scan_image_folder(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "empty" / "b.bmp")
    folder = scan_image_folder(tmp_path)
    assert folder.classes == ("empty", "only") and folder.counts() == [1, 1]


def test_glyphs_task_is_deterministic_at_32_and_64_px(tmp_path):
    for size in (32, 64):
        a = write_dataset(
            tmp_path / f"a{size}", task="glyphs", per_class=2, size=size, seed=5, progress=False
        )
        b = write_dataset(
            tmp_path / f"b{size}", task="glyphs", per_class=2, size=size, seed=5, progress=False
        )
        files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
        assert len(files) == 2 * len(TASKS["glyphs"])
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
        assert Image.open(a / files[0]).size == (size, size)
    assert not np.array_equal(render("glyphs", "A", 0, seed=5), render("glyphs", "A", 0, seed=6))


def test_glyphs_are_drawn_in_several_fonts_and_differ_by_class():
    from tl2edge.synth import GLYPH_FONTS, _font_dir

    assert all((_font_dir() / name).is_file() for name in GLYPH_FONTS)
    means = {
        c: np.mean([render("glyphs", c, i, size=32).astype(float) for i in range(6)], axis=0)
        for c in ("2", "A", "X")
    }
    assert np.abs(means["2"] - means["A"]).mean() > 1.0
    assert np.abs(means["A"] - means["X"]).mean() > 1.0


@pytest.mark.parametrize("task", ["source", "procedural"])
def test_pretraining_tasks_hold_no_glyphs(task):
    from tl2edge.synth import GLYPHS

    # The far task is honest only if pretraining never saw a letter or a digit.
    assert not set(TASKS[task]) & set(GLYPHS)
    assert all(len(name) > 1 and not name.isdigit() for name in TASKS[task])
    draws = {f.__qualname__ for f in TASKS[task].values()}
    assert not any("_glyph" in q for q in draws)
    assert not set(TASKS[task]) & set(TASKS["target"])


def test_procedural_task_is_deterministic_and_its_fractal_classes_are_fixed():
    from tl2edge.synth import PROCEDURAL_FRACTALS

    names = list(TASKS["procedural"])
    assert set(TASKS["source"]) <= set(names) and len(names) >= 50
    assert sum(n.startswith("fractal") for n in names) == PROCEDURAL_FRACTALS
    for name in ("fractal00", "fractal31", "noise-oriented", "gabor-plaid", "leaves-discs"):
        a = render("procedural", name, 2, size=32, seed=3)
        assert np.array_equal(a, render("procedural", name, 2, size=32, seed=3))
        assert not np.array_equal(a, render("procedural", name, 2, size=32, seed=4))
        assert a.std() > 10  # something is drawn over the background
    # a fractal class is one IFS whatever the seed: the same maps, other colours and poses
    from tl2edge.synth import _ifs_class

    assert not np.allclose(_ifs_class(0), _ifs_class(1))
    assert np.array_equal(_ifs_class(5), _ifs_class(5))


def test_glyphs_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    import sys

    from tl2edge import synth

    synth._font.cache_clear()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError, match="matplotlib"):
        write_dataset(tmp_path / "g", task="glyphs", per_class=1, size=32, progress=False)
    assert not (tmp_path / "g").exists()
    synth._font.cache_clear()
