"""Helpers shared by the serving tests (and the container test): a server on its own event
loop thread, random pixels, encoded images. A module of its own name, not conftest: every
test folder has a conftest.py, and `from conftest import ...` would find whichever came first.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
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


def png_bomb(width: int, height: int, *, complete: bool = True) -> bytes:
    """A grayscale PNG of zeros, `width` x `height`: ~1 KB per 1 MP, built in milliseconds.

    The deflate stream repeats one independently compressed block of rows (a full flush
    resets the compressor, so every copy is identical). `complete=False` keeps only the
    header and the first block (a truncated image).
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\0" * (width + 1)  # filter byte + pixels
    per_block = max(1, (1 << 22) // len(row))
    blocks, rest = divmod(height, per_block)
    raw = row * per_block
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(raw) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = c.compress(row * rest) + c.flush()
    adler = 1
    for _ in range(blocks):
        adler = zlib.adler32(raw, adler)
    adler = zlib.adler32(row * rest, adler)
    stream = b"\x78\xda" + block * blocks + tail + struct.pack(">I", adler)
    if not complete:
        stream = stream[: 2 + len(block)]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    end = chunk(b"IEND", b"") if complete else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream) + end


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims `width` x `height` (truncated if decoded)."""
    data = bytearray(png_bytes(random_pixels(1, size=16)[0], "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def start_cli_server(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    """`tl2edge serve ARGS` in a child process on a free port; (process, its "serving" log event)."""
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tl2edge",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--log-format",
            "json",
            *args,
        ],
        stderr=open(log, "w"),  # noqa: SIM115
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["msg"] == "serving":
                return proc, event
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start: " + log.read_text())
