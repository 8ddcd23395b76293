"""Writing bundles into a model repository, all variants or none.

Layout (see `tl2edge.manifest`): each variant is its own model, `REPO/<name>-<variant>/<version>/`,
so all variants of one export share a version number. An export is built in a staging folder
inside REPO (same file system, so the final moves are renames); `publish` then moves every
version folder into place and, if any move fails, puts back what it had already moved.
Serving ignores dot-folders, so a staging folder is never mistaken for a model.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tl2edge.errors import UserError
from tl2edge.fsutil import swap_in
from tl2edge.manifest import list_versions


def model_name(name: str, variant: str) -> str:
    return f"{name}-{variant}"


def version_dir(repository: str | Path, name: str, variant: str, version: int) -> Path:
    return Path(repository) / model_name(name, variant) / str(version)


def next_version(repository: str | Path, name: str, variants: Iterable[str]) -> int:
    """One more than the highest version any variant of `name` has (1 in an empty repo)."""
    highest = [
        max(list_versions(Path(repository) / model_name(name, v)), default=0) for v in variants
    ]
    return max(highest, default=0) + 1


def check_free(
    repository: str | Path, name: str, variants: Iterable[str], version: int, *, overwrite: bool
) -> None:
    """Refuse, before any work, to replace an existing version without `overwrite`."""
    if Path(repository).exists() and not Path(repository).is_dir():
        raise UserError(f"--repository {repository} exists and is not a folder")
    taken = [
        str(version_dir(repository, name, v, version))
        for v in variants
        if version_dir(repository, name, v, version).exists()
    ]
    if taken and not overwrite:
        raise UserError(
            f"{', '.join(taken)} already exist(s); pass --overwrite to replace, or choose another "
            f"--version (the next free one is {next_version(repository, name, variants)})"
        )


@contextlib.contextmanager
def staging(repository: str | Path) -> Iterator[Path]:
    """A temporary folder inside REPO, removed on exit whatever happens (and REPO with it if
    this export created REPO and left nothing in it)."""
    repo = Path(repository)
    created = not repo.exists()
    repo.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=repo))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            _remove_if_empty(repo)


def publish(moves: dict[Path, Path], *, overwrite: bool) -> None:
    """Move each built folder (key) to its version folder (value), all or nothing."""
    done: list[tuple[Path, Path, Path | None]] = []  # (built, target, old version moved aside)
    try:
        for built, target in moves.items():
            if target.exists() and not overwrite:
                raise UserError(f"{target} appeared during the export; pass --overwrite")
            new_parent = not target.parent.exists()
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                old = swap_in(built, target)
            except BaseException:
                if new_parent:
                    _remove_if_empty(target.parent)
                raise
            done.append((built, target, old))
    except BaseException:
        for built, target, old in reversed(done):
            target.rename(built)
            if old is not None:
                old.rename(target)
            _remove_if_empty(target.parent)
        raise
    for _, _, old in done:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
