"""Dynamic batching: coalesce concurrent requests into one ONNX Runtime call.

Requests queue per model version. A worker takes everything already queued, up to
`max_batch_size` images (with a delay > 0 it first waits up to that long for the batch to
fill, as Triton's `max_queue_delay` does), runs it as one call on a worker thread so the
event loop keeps serving, and hands each request back its own rows. While a batch runs,
the next one gathers, so under load batches fill by themselves with no added delay.

A request with more images than `max_batch_size` is cut into chunks that are batched like
any other request and joined again. Requests whose caller has gone (deadline, cancel) are
dropped before they reach the model.

The worker cannot die from a batch: whatever goes wrong while forming or running one fails
the requests of that batch and nothing else, and the worker takes the next. A request whose
pixels do not have the shape and type this version takes is refused at submit
(`WrongInput`), so it never reaches, let alone breaks, another request's batch.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tl2edge.serve.config import BatchConfig
from tl2edge.serve.priority import normal_priority_executor

log = logging.getLogger("tl2edge.serve.batching")

# (batch size, per-request queue seconds, compute seconds)
BatchObserver = Callable[[int, list[float], float], None]


class BatcherClosed(RuntimeError):
    """The model version was retired (hot reload) between lookup and submit."""


class WrongInput(BatcherClosed):
    """Pixels checked for another version (other image size or type) than this batcher's."""


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
        item_shape: tuple[int, ...] | None = None,
        dtype: type | None = None,
    ) -> None:
        self._run = run
        self.item_shape = item_shape
        self.dtype = np.dtype(dtype) if dtype is not None else None
        self.config = config
        self.name = name
        self._observer = observer
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._executor = normal_priority_executor(config.instances, f"ort-{name}")
        self._workers = [self._start_worker(i) for i in range(config.instances)]

    def _start_worker(self, i: int) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self.name}-{i}")

    @property
    def alive(self) -> bool:
        """Every worker is running (or the batcher was closed on purpose)."""
        return self._closing or not any(w.done() for w in self._workers)

    def _revive(self) -> None:
        """Replace a worker that ended anyway (it must not, but a hang is worse)."""
        for i, worker in enumerate(self._workers):
            if worker.done() and not self._closing:
                exc = None if worker.cancelled() else worker.exception()
                log.error(
                    "batcher worker ended; restarting it",
                    extra={"batcher": self.name, "error": repr(exc)},
                )
                self._workers[i] = self._start_worker(i)

    @property
    def queued(self) -> int:
        """Images waiting for a model run."""
        return self._queued_rows

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        """Outputs for `pixels` [N, ...]; large N is cut into max-batch-size chunks."""
        if self._closing:
            raise BatcherClosed(f"batcher {self.name} is closed")
        if (self.item_shape is not None and pixels.shape[1:] != self.item_shape) or (
            self.dtype is not None and pixels.dtype != self.dtype
        ):
            raise WrongInput(
                f"batcher {self.name} takes {self.dtype} {list(self.item_shape or ())} items, "
                f"got {pixels.dtype} {list(pixels.shape[1:])}"
            )
        self._revive()
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
            batch: list[_Item] = []
            try:
                await self._fill()
                batch = self._take()
                if batch:
                    await self._execute(batch)
            except Exception as exc:  # fails this batch only; the worker goes on
                log.exception("batch failed", extra={"batcher": self.name})
                _fail(batch, exc)

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
        try:
            pixels = (
                batch[0].pixels if len(batch) == 1 else np.concatenate([b.pixels for b in batch])
            )
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run, pixels
            )
            if len(outputs) != len(pixels):
                raise RuntimeError(f"model gave {len(outputs)} rows for {len(pixels)} inputs")
        except Exception as exc:  # handed to every waiting request
            _fail(batch, exc)
            return
        compute = time.perf_counter() - start
        offset = 0
        for item in batch:
            n = len(item.pixels)
            if not item.future.done():
                item.future.set_result(outputs[offset : offset + n])
            offset += n
        if self._observer is not None:
            try:
                self._observer(len(pixels), [start - b.enqueued for b in batch], compute)
            except Exception:  # statistics must not cost an answer
                log.exception("batch observer failed", extra={"batcher": self.name})


def _fail(batch: list[_Item], exc: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(exc)
