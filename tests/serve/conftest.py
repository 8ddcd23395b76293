"""Fixtures for the serving tests: tiny model repositories and servers on 127.0.0.1:0.

Run: .venv/bin/pytest tests/serve -q
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from models import write_version

from tl2edge.serve.server import ServeConfig, Server, create_server


class ServerThread:
    """A server running on its own event loop in a background thread."""

    def __init__(
        self, source: Path, *, config: ServeConfig | None = None, runtime=None, start: bool = True
    ) -> None:
        self.source = source
        self.config = config or ServeConfig()
        self.runtime = runtime
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Server
        self.port: int
        self.server, self.port = self.call(
            create_server("127.0.0.1:0", source, config=self.config, runtime=runtime)
        )
        self.started: Future | None = None
        if start:
            self.start().result(timeout=60)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro, timeout: float = 60):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> Future:
        self.started = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop)
        return self.started

    def stop(self, grace: float = 5.0) -> None:
        if self.loop.is_running():
            try:
                self.call(self.server.stop(grace), timeout=grace + 30)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


def random_pixels(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def png_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()
