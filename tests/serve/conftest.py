"""Fixtures for the serving tests: tiny model repositories and servers on 127.0.0.1:0.

Run: .venv/bin/pytest tests/serve -q
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from models import write_version
from servekit import ServerThread


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one 8x8, 3-class model: tiny-int8 v1."""
    root = tmp_path / "repo"
    write_version(root, "tiny-int8", 1)
    return root


@pytest.fixture
def server(repo: Path) -> Iterator[ServerThread]:
    with ServerThread(repo) as s:
        yield s


@pytest.fixture
def client(server: ServerThread):  # type: ignore[no-untyped-def]
    from tl2edge.client import Client

    with Client(server.address, timeout=20) as c:
        yield c
