"""Dynamic batching: coalesce concurrent requests into one ONNX Runtime call.

Requests queue per model version. A worker takes everything already queued, up to
`max_batch_size` images (with a delay > 0 it first waits up to that long for the batch to
fill, as Triton's `max_queue_delay` does), runs it as one call on a worker thread so the
event loop keeps serving, and hands each request back its own rows. While a batch runs,
the next one gathers, so under load batches fill by themselves with no added delay.

A request with more images than `max_batch_size` is cut into chunks that are batched like
any other request and joined again. Requests whose caller has gone (deadline, cancel) are
dropped before they reach the model.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

# (batch size, per-request queue seconds, compute seconds)
BatchObserver = Callable[[int, list[float], float], None]


class BatcherClosed(RuntimeError):
    """The model version was retired (hot reload) between lookup and submit."""


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 8
    max_batch_delay_ms: float = 0.0
    instances: int = 1  # concurrent model executions per model version

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max batch size ({self.max_batch_size}) must be at least 1")
        if self.max_batch_delay_ms < 0:
            raise ValueError(f"max batch delay ({self.max_batch_delay_ms} ms) must be >= 0")
        if self.instances < 1:
            raise ValueError(f"instances ({self.instances}) must be at least 1")


@dataclass
class _Item:
    pixels: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queue + worker(s) for one model version. `run(batch) -> outputs` is blocking."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        config: BatchConfig,
        *,
        name: str = "model",
        observer: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self.config = config
        self.name = name
        self._observer = observer
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(config.instances, thread_name_prefix=f"ort-{name}")
        self._workers = [
            asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{name}-{i}")
            for i in range(config.instances)
        ]

    @property
    def queued(self) -> int:
        """Images waiting for a model run."""
        return self._queued_rows

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        """Outputs for `pixels` [N, ...]; large N is cut into max-batch-size chunks."""
        if self._closing:
            raise BatcherClosed(f"batcher {self.name} is closed")
        limit = self.config.max_batch_size
        if len(pixels) > limit:
            parts = [self.submit(pixels[i : i + limit]) for i in range(0, len(pixels), limit)]
            return np.concatenate(await asyncio.gather(*parts))
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(pixels, future))
        self._queued_rows += len(pixels)
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Finish what is queued, then stop the workers and their thread."""
        self._closing = True
        self._wake.set()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._executor.shutdown(wait=False)

    async def _work(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._fill()
            batch = self._take()
            if batch:
                await self._execute(batch)

    async def _fill(self) -> None:
        """With a delay configured, wait (from the oldest request's arrival) for a full batch."""
        delay = self.config.max_batch_delay_ms / 1000.0
        if delay <= 0 or self._closing:
            return
        deadline = self._queue[0].enqueued + delay
        while self._queued_rows < self.config.max_batch_size and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        rows = 0
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # the caller gave up while queued
                self._queue.popleft()
                self._queued_rows -= len(item.pixels)
                continue
            if rows + len(item.pixels) > self.config.max_batch_size:
                break
            self._queue.popleft()
            self._queued_rows -= len(item.pixels)
            batch.append(item)
            rows += len(item.pixels)
        return batch

    async def _execute(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([b.pixels for b in batch])
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run, pixels
            )
        except Exception as exc:  # handed to every waiting request
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        compute = time.perf_counter() - start
        offset = 0
        for item in batch:
            n = len(item.pixels)
            if not item.future.done():
                item.future.set_result(outputs[offset : offset + n])
            offset += n
        if self._observer is not None:
            self._observer(len(pixels), [start - b.enqueued for b in batch], compute)
