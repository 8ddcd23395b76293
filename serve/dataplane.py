"""The protocol-neutral data plane: what every RPC of every API calls.

Servicers turn their messages into numpy arrays or encoded images and call one method
here; this layer picks the model, admits or refuses the request (draining, overload),
validates pixels, decodes images off the event loop, batches through the model's
`Batcher`, and counts the outcome.

Pixel input contract (both APIs): uint8 RGB 0..255, NHWC, the model's height and width.
Float pixels are accepted if every value is finite and within 0..255; they are rounded to
the nearest integer for uint8 models. NaN or Inf is refused with INVALID_ARGUMENT rather
than silently turned into some pixel value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import grpc
import numpy as np

from tl2edge.images import (
    SERVE_FORMATS,
    BadImage,
    declared_pixels,
    decode_rgb_bounded,
    refuse_decompression_bombs,
    resize_rgb,
)
from tl2edge.serve.aliases import alias_parameters
from tl2edge.serve.batching import BatcherClosed
from tl2edge.serve.config import (
    DEFAULT_LARGE_IMAGE_PIXELS,
    DEFAULT_LARGE_IMAGE_QUEUE,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_INFLIGHT_MB,
    BatchConfig,
)
from tl2edge.serve.errors import (
    InvalidInput,
    Overloaded,
    ServeError,
    Unavailable,
)
from tl2edge.serve.limits import ByteBudget
from tl2edge.serve.metrics import Metrics
from tl2edge.serve.modelcontrol import IndexEntry, ModelControl
from tl2edge.serve.priority import lower_this_thread, normal_priority_executor
from tl2edge.serve.repository import LoadedModel, ModelRepository

log = logging.getLogger("tl2edge.serve.dataplane")

DEFAULT_TOP_K = 5
MAX_IMAGES_PER_REQUEST = 1024
MAX_SIDE = 16384
UNKNOWN_MODEL = "unknown"  # the metrics label of every name no loaded model answers to
LARGE_LANE_NICE = 10  # large decodes yield the CPU to everything else of the server (Linux)


class Prediction(NamedTuple):
    label: str
    index: int
    score: float


def top_k(probs: np.ndarray, k: int, labels: Sequence[str]) -> list[list[Prediction]]:
    """Best k classes per row, highest score first (ties: lower index first)."""
    k = max(1, min(k or DEFAULT_TOP_K, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [Prediction(labels[i] if i < len(labels) else str(i), int(i), float(row[i])) for i in idx]
        for row, idx in zip(probs, order, strict=True)
    ]


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        *,
        metrics: Metrics | None = None,
        max_concurrent_requests: int = 256,
        default_model: str | None = None,
        decode_threads: int = 2,
        max_inflight_mb: int = DEFAULT_MAX_INFLIGHT_MB,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        large_image_pixels: int = DEFAULT_LARGE_IMAGE_PIXELS,
        large_image_queue: int = DEFAULT_LARGE_IMAGE_QUEUE,
    ) -> None:
        self.repository = repository
        self.metrics = metrics or Metrics()
        self.max_concurrent = max_concurrent_requests
        self.budget = ByteBudget(max_inflight_mb * 2**20)
        self.max_image_pixels = max_image_pixels
        refuse_decompression_bombs()
        self.default_model = default_model
        self.ready = False
        self._drain = asyncio.Event()
        self.inflight = 0
        self._decoder = normal_priority_executor(decode_threads, "decode")
        # The large lane: one thread at a lower CPU priority, for requests over
        # `large_image_pixels`; at most `large_image_queue` more wait for it.
        self.large_image_pixels = large_image_pixels
        self.large_image_queue = large_image_queue
        self.large_pending = 0
        self._large = ThreadPoolExecutor(
            1, thread_name_prefix="decode-large", initializer=_lower_priority
        )  # started by the loop: its niceness is relative to the process's, set below
        self._idle = asyncio.Event()
        self._idle.set()
        self.control = ModelControl(repository)  # the server sets its mode and callback

    @property
    def draining(self) -> bool:
        return self._drain.is_set()

    @draining.setter
    def draining(self, value: bool) -> None:
        if value:
            self._drain.set()
        else:
            self._drain.clear()

    async def stream(
        self, requests: AsyncIterator[T], handle: Callable[[T], Awaitable[R]], context: Any
    ) -> AsyncIterator[R]:
        """A bidirectional stream that ends when the server drains.

        Messages already received are answered; then the stream closes with UNAVAILABLE, so
        a camera client reconnects to another replica at once instead of holding shutdown
        until the grace period ends.
        """
        async for response in ordered_stream(requests, handle, until=self._drain):
            yield response
        if self.draining:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "server is shutting down; reconnect to another replica"
            )

    # -- models ------------------------------------------------------------------------------
    def model(self, name: str = "", version: str | int = "") -> LoadedModel:
        if not name:
            name = self.default_model_name()
        return self.repository.get(name, version)

    def get(self, name: str, version: str | int = "") -> LoadedModel:
        """Exactly the model asked for (no default model): ModelNotFound otherwise."""
        return self.repository.get(name, version)

    def versions(self, name: str) -> list[int]:
        """The loaded versions of served model `name` (empty when none)."""
        return list(self.repository.models.get(name, {}))

    @property
    def batching(self) -> BatchConfig:
        return self.repository.batching

    def alias_parameters(self, asked: str, served: str) -> dict[str, str]:
        """How plain export name `asked` resolved to `served` (see serve.aliases)."""
        return alias_parameters(self.repository, asked, served)

    def loaded(self, name: str = "", version: str | int = "") -> list[LoadedModel]:
        """Every loaded model version; with `name`, that model's (a plain export name: its
        variant's); with `version` too, that one. ModelNotFound for an unknown one."""
        repo = self.repository
        if not name:
            return repo.all()
        if version:
            return [repo.get(name, version)]
        resolved = repo.resolve(name)
        if not repo.models.get(resolved):
            repo.get(resolved)  # raises NOT_FOUND with the known names
        return list(repo.models[resolved].values())

    def catalog(self) -> list[tuple[str, dict[int, LoadedModel], str]]:
        """(name, versions, resolves_to) of every served model and of every plain export name
        that resolves to one (resolves_to "" for a model itself), sorted by name."""
        repo = self.repository
        rows = [(name, versions, "") for name, versions in repo.models.items()]
        rows += [
            (a.name, repo.models[a.target], a.target)
            for a in repo.aliases.values()
            if a.target in repo.models and a.name not in repo.models
        ]
        return sorted(rows, key=lambda r: r[0])

    def default_model_name(self) -> str:
        if self.default_model:
            return self.default_model
        names = sorted(self.repository.models)
        if len(names) == 1:
            return names[0]
        # One export's variants and nothing else: its plain name (serve.aliases) is the default.
        exports = [a for a in self.repository.aliases.values() if a.target]
        if len(exports) == 1 and {c.model for c in exports[0].candidates} == set(names):
            return exports[0].name
        raise InvalidInput(
            f"this server has {len(names)} models ({', '.join(names)}); name one in the request "
            f"(or start the server with --default-model)"
        )

    # -- model control (serve/modelcontrol.py) ---------------------------------------------
    def repository_index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        return self.control.index(ready_only=ready_only)

    async def load_model(self, name: str, parameters: Sequence[str] = ()) -> None:
        if self.draining:
            raise Unavailable("server is shutting down; load the model on another replica")
        await self.control.load(name, parameters)

    async def unload_model(self, name: str) -> None:
        if self.draining:
            raise Unavailable("server is shutting down; it unloads every model anyway")
        await self.control.unload(name)

    # -- admission ---------------------------------------------------------------------------
    def model_label(self, name: str) -> str:
        """The metrics label for a requested model name: a served model's name, never the
        client's string (which could be anything, of any length)."""
        if not name:
            return "-"
        try:
            return self.repository.get(name).name
        except ServeError:
            return UNKNOWN_MODEL

    @contextlib.asynccontextmanager
    async def admit(self, api: str, model: str = "", nbytes: int = 0) -> AsyncIterator[None]:
        """Count one inference request; refuse it when draining, not ready, or overloaded.

        `nbytes`: the size of the request message, held against `--max-inflight-mb`.
        """
        start = time.perf_counter()
        outcome = "OK"
        try:
            if self.draining:
                raise Unavailable("server is shutting down; retry on another replica")
            if not self.ready:
                raise Unavailable("models are still loading; retry when health says SERVING")
            if self.inflight >= self.max_concurrent:
                raise Overloaded(
                    f"server is at its limit of {self.max_concurrent} concurrent requests "
                    f"(--max-concurrent-requests); retry with backoff"
                )
            with self.budget.hold(nbytes):
                self.inflight += 1
                self._idle.clear()
                self.metrics.inflight.set(self.inflight)
                try:
                    yield
                finally:
                    self.inflight -= 1
                    self.metrics.inflight.set(self.inflight)
                    if self.inflight == 0:
                        self._idle.set()
        except ServeError as exc:
            outcome = exc.code.name
            raise
        except asyncio.CancelledError:
            outcome = grpc.StatusCode.CANCELLED.name
            raise
        except Exception:
            outcome = grpc.StatusCode.INTERNAL.name
            raise
        finally:
            self.metrics.requests.labels(api, self.model_label(model), outcome).inc()
            self.metrics.request_seconds.labels(api).observe(time.perf_counter() - start)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # -- inference ---------------------------------------------------------------------------
    async def infer(
        self, model: LoadedModel, pixels: np.ndarray, *, pinned: bool = False
    ) -> tuple[LoadedModel, np.ndarray]:
        """probs [N, C] for pixels [N, H, W, 3]; returns the model version that answered.

        `pinned`: the caller asked for this exact version (else: the latest, even if a
        newer one is swapped in while the request waits).
        """
        start = time.perf_counter()
        ok = False
        sent = pixels
        try:
            pixels = self.check_pixels(model, sent)
            for _ in range(3):
                try:
                    probs = await model.batcher.submit(pixels)
                    ok = True
                    return model, probs
                except BatcherClosed:
                    # Hot reload retired this version after lookup: ask the repository again.
                    model, pixels = self.revalidate(model, sent, pinned=pinned)
            raise Unavailable(f"model {model.name} is being reloaded; retry")
        finally:
            model.stats.request_done(ok, len(pixels), time.perf_counter() - start)

    def revalidate(
        self, old: LoadedModel, sent: np.ndarray, *, pinned: bool
    ) -> tuple[LoadedModel, np.ndarray]:
        """The version that now serves `old`'s name, and the pixels checked against it.

        Pixels checked (or decoded) for one version never run on another unchecked: a new
        version with another image size or input type refuses them with UNAVAILABLE, and
        the client's retry is validated (or decoded) for the new version.
        """
        model = self.repository.get(old.name, old.version if pinned else "")
        if model is old:
            return model, self.check_pixels(model, sent)
        try:
            return model, self.check_pixels(model, sent)
        except InvalidInput as exc:
            raise Unavailable(
                f"model {model.name} changed from version {old.version} to {model.version} "
                f"while the request waited ({exc}); version changed, retry"
            ) from None

    def check_pixels(self, model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
        h, w = model.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (h, w, 3):
            raise InvalidInput(
                f"pixels have shape {list(pixels.shape)}; model {model.name} expects "
                f"[N, {h}, {w}, 3] (RGB, NHWC)"
            )
        if len(pixels) == 0:
            raise InvalidInput("empty batch: send at least one image")
        if len(pixels) > MAX_IMAGES_PER_REQUEST:
            raise InvalidInput(
                f"{len(pixels)} images in one request; the limit is {MAX_IMAGES_PER_REQUEST}"
            )
        if pixels.dtype == np.uint8:
            return pixels if model.input_dtype is np.uint8 else pixels.astype(model.input_dtype)
        if pixels.dtype.kind != "f":
            raise InvalidInput(f"pixel type {pixels.dtype} is not supported; send uint8 or float32")
        bad = int(np.count_nonzero(~np.isfinite(pixels)))
        if bad:
            raise InvalidInput(f"{bad} pixel values are NaN or Inf; send finite values in 0..255")
        lo, hi = float(pixels.min()), float(pixels.max())
        if lo < 0 or hi > 255:
            raise InvalidInput(f"pixel values span {lo:g}..{hi:g}; send raw RGB values in 0..255")
        if model.input_dtype is np.uint8:
            return np.rint(pixels).astype(np.uint8)
        return pixels.astype(model.input_dtype, copy=False)

    async def decode(self, model: LoadedModel, images: Sequence[bytes | np.ndarray]) -> np.ndarray:
        """Encoded images or HxWx3 uint8 arrays -> [N, H, W, 3] at the model's size."""
        if not images:
            raise InvalidInput("empty batch: send at least one image")
        if len(images) > MAX_IMAGES_PER_REQUEST:
            raise InvalidInput(
                f"{len(images)} images in one request; the limit is {MAX_IMAGES_PER_REQUEST}"
            )
        size = model.image_size
        if all(isinstance(i, np.ndarray) and i.shape[:2] == size for i in images):
            return np.stack(images)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        with self.budget.hold(len(images) * size[0] * size[1] * 3, "the decoded images"):
            if request_pixels(images) <= self.large_image_pixels:
                return await loop.run_in_executor(
                    self._decoder, self._decode_all, list(images), size
                )
            if self.large_pending > self.large_image_queue:
                raise Overloaded(
                    f"{self.large_pending} requests with large images (over "
                    f"{self.large_image_pixels:,} pixels, --large-image-pixels) are already "
                    f"being decoded or waiting (--large-image-queue {self.large_image_queue}); "
                    f"retry with backoff, or send the images scaled down"
                )
            self.large_pending += 1
            try:
                return await loop.run_in_executor(self._large, self._decode_all, list(images), size)
            finally:
                self.large_pending -= 1

    def _decode_all(self, images: list[bytes | np.ndarray], size: tuple[int, int]) -> np.ndarray:
        out = np.empty((len(images), *size, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            try:
                out[i] = (
                    resize_rgb(image, size)
                    if isinstance(image, np.ndarray)
                    else decode_rgb_bounded(
                        image, size, max_pixels=self.max_image_pixels, reserve=self._hold_decode
                    )
                )
            except BadImage as exc:
                raise InvalidInput(
                    f"image {i}: {exc}; send {', '.join(SERVE_FORMATS)} bytes"
                ) from None
        return out

    def _hold_decode(self, nbytes: int) -> contextlib.AbstractContextManager[None]:
        return self.budget.hold(nbytes, "decoding this image")

    async def classify(
        self,
        model: LoadedModel,
        images: Sequence[bytes | np.ndarray],
        k: int,
        *,
        pinned: bool = False,
    ) -> tuple[LoadedModel, list[list[Prediction]]]:
        pixels = await self.decode(model, images)
        model, probs = await self.infer(model, pixels, pinned=pinned)
        return model, top_k(probs, k, model.labels)

    def close(self) -> None:
        self._decoder.shutdown(wait=False)
        self._large.shutdown(wait=False)


def request_pixels(images: Sequence[bytes | np.ndarray]) -> int:
    """The pixels a request's images declare (headers only; arrays by their shape)."""
    return sum(
        i.shape[0] * i.shape[1] if isinstance(i, np.ndarray) else declared_pixels(i) for i in images
    )


def _lower_priority() -> None:
    """The large lane's thread: LARGE_LANE_NICE below the process's priority."""
    lower_this_thread(LARGE_LANE_NICE)


T = TypeVar("T")
R = TypeVar("R")


async def ordered_stream(
    requests: AsyncIterator[T],
    handle: Callable[[T], Awaitable[R]],
    *,
    window: int = 16,
    until: asyncio.Event | None = None,
) -> AsyncIterator[R]:
    """Handle stream messages concurrently (up to `window`) and yield results in order.

    `handle` must not raise for a bad message; it returns an error response instead. When
    `until` is set, no further message is read; those already taken are answered, then the
    stream ends.
    """
    # A slot is taken before a message is read, so the reader never holds a received
    # message it cannot queue: cancelling it (at drain) loses nothing that arrived.
    slots = asyncio.Semaphore(window)
    pending: asyncio.Queue[asyncio.Task[R] | None] = asyncio.Queue()

    async def read() -> None:
        messages = aiter(requests)
        while True:
            await slots.acquire()
            try:
                request = await anext(messages)
            except StopAsyncIteration:
                pending.put_nowait(None)
                return
            pending.put_nowait(asyncio.ensure_future(handle(request)))

    reader: asyncio.Future[None] | None = asyncio.ensure_future(read())
    stopper = asyncio.ensure_future(until.wait()) if until is not None else None
    try:
        while stopper is None or not stopper.done():
            getter = asyncio.ensure_future(pending.get())
            waits = {getter, reader} if reader is not None else {getter}
            if stopper is not None:
                waits.add(stopper)
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if reader is not None and reader in done:
                    reader.result()  # the client stream failed: raise its error
                    reader = None  # it finished: the queue ends with None
                continue
            task = getter.result()
            if task is None:
                return
            response = await task
            slots.release()
            yield response
        # Draining: read nothing more, answer every message already taken, end.
        if reader is not None:
            reader.cancel()
        while not pending.empty():
            task = pending.get_nowait()
            if task is None:
                break
            yield await task
    finally:
        if reader is not None:
            reader.cancel()
        if stopper is not None:
            stopper.cancel()
        while not pending.empty():
            task = pending.get_nowait()
            if task is not None:
                task.cancel()
