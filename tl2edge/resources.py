"""Data the package reads at run time (package data under tl2edge/assets/).

Read through `importlib.resources`, so it works from a wheel as well as from a checkout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from tl2edge.errors import UserError

# VGG16's conv base pretrained by tl2edge on procedural images (`make source-backbone`),
# float16 npz; its training report is vgg16_synth_source.md beside it.
SOURCE_BACKBONE = "vgg16_synth_source.npz"


def asset(name: str) -> Traversable:
    """The packaged file tl2edge/assets/NAME."""
    return resources.files("tl2edge").joinpath("assets", name)


@contextlib.contextmanager
def asset_path(name: str) -> Iterator[Path]:
    """A real file path for tl2edge/assets/NAME while the block runs (extracted if need be)."""
    found = asset(name)
    if not found.is_file():
        raise UserError(
            f"packaged file tl2edge/assets/{name} is missing from this installation; "
            "reinstall tl2edge (a checkout rebuilds the backbone with `make source-backbone`)"
        )
    with resources.as_file(found) as path:
        yield path
