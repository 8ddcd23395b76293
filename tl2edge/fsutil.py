"""Atomic folder writes: a folder is built under a temporary name and renamed into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tl2edge.errors import UserError


def swap_in(built: Path, target: Path) -> Path | None:
    """Rename `built` to `target`. An existing `target` is first renamed aside to a hidden
    sibling, which is returned (the caller removes it, or renames it back to undo); on
    failure everything is left as it was."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    try:
        built.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    return old


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it becomes `target`.

    On any exception the temporary folder is removed and `target` is left as it was.
    Without `overwrite`, an existing `target` is refused before anything is written.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise UserError(f"{target} exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
