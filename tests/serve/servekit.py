"""Helpers shared by the serving tests (and the container test): a server on its own event
loop thread, random pixels, encoded images. A module of its own name, not conftest: every
test folder has a conftest.py, and `from conftest import ...` would find whichever came first.
"""

from __future__ import annotations

import asyncio
import io
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from PIL import Image

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


def random_pixels(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def png_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()
