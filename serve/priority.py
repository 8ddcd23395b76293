"""CPU priority inside the server: the model runs before requests are handled (Linux).

When more requests arrive than the cores can serve (clients that retry in a loop, a flood
of bad requests), the threads that receive, parse and refuse them compete for the same
cores as the threads that run the model, and every request already admitted gets slower.
With `--request-nice N` (default 5) the threads that handle requests, the event loop and
gRPC's own threads, run N steps of niceness below the rest of the server. The threads that
run the model (ONNX Runtime's, the batcher's) and decode images keep the process's
priority. Under contention the model then gets most of the CPU, and floods slow down
themselves instead of the requests being served. On an idle machine nothing changes.

Linux threads inherit the niceness of the thread that starts them, and an unprivileged
process cannot lower a niceness it has raised. Threads that must keep the process's
priority are therefore started by one thread that keeps it, `Spawner`, and thread pools are
filled when they are made rather than on first use (`normal_priority_executor`).
Elsewhere than Linux, niceness is per process and all of this is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

LINUX = sys.platform.startswith("linux")
MAX_NICE = 19
T = TypeVar("T")


def niceness(native_id: int | None = None) -> int:
    """The niceness of a thread (default: the calling one)."""
    return os.getpriority(os.PRIO_PROCESS, native_id or threading.get_native_id())


def base_niceness() -> int:
    """The process's priority: the spawner's niceness (the main thread may be lowered)."""
    return spawner().niceness


def renice(native_id: int, steps: int) -> None:
    """Set a thread `steps` below the process's priority (higher niceness, capped at 19)."""
    if LINUX:
        with contextlib.suppress(OSError):  # the thread ended, or the OS refuses: no harm
            os.setpriority(os.PRIO_PROCESS, native_id, min(MAX_NICE, base_niceness() + steps))


def lower_this_thread(steps: int) -> None:
    renice(threading.get_native_id(), steps)


class Spawner:
    """One thread at the process's priority that starts other threads on request."""

    def __init__(self) -> None:
        # Started now, by the calling thread: it inherits that thread's niceness.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="spawner")
        self.niceness, self._ident = self._pool.submit(
            lambda: (niceness(), threading.get_ident())
        ).result()

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the spawner thread and wait for it: threads it starts keep the
        process's priority."""
        if threading.get_ident() == self._ident:
            return fn()
        return self._pool.submit(fn).result()


_spawner: Spawner | None = None
_spawner_lock = threading.Lock()


def spawner() -> Spawner:
    """The process's spawner; the server makes it at start-up, before any thread is lowered."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = Spawner()
        return _spawner


def normal_priority_executor(
    workers: int, prefix: str, initializer: Callable[[], object] | None = None
) -> ThreadPoolExecutor:
    """A thread pool whose `workers` threads are all started now, by the spawner, so they
    keep the process's priority whichever thread uses the pool later."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix=prefix, initializer=initializer)

    def fill() -> None:
        # Every worker blocks until all have started, so each submit starts a new thread.
        barrier = threading.Barrier(workers + 1)
        for _ in range(workers):
            pool.submit(barrier.wait)
        barrier.wait()

    spawner().call(fill)
    return pool


def lower_request_threads(steps: int) -> list[int]:
    """Lower the calling thread (the event loop) and gRPC's own threads by `steps`.

    gRPC's threads are told apart by their names: Python threads keep the process's name,
    gRPC's core names its own ("grpc_global_tim", "event_engine", ...). Threads gRPC starts
    later inherit the lowered priority from the threads that start them. Returns the ids of
    the threads lowered.
    """
    if not LINUX or steps <= 0:
        return []
    lowered = [threading.get_native_id()]
    main_name = _comm(os.getpid())
    for task in Path("/proc/self/task").iterdir():
        tid = int(task.name)
        name = _comm(tid)
        if name is not None and name != main_name and tid not in lowered:
            lowered.append(tid)
    for tid in lowered:
        renice(tid, steps)
    return lowered


def restore_threads(native_ids: list[int]) -> None:
    """Put lowered threads back at the process's priority where the OS allows it (raising a
    priority needs CAP_SYS_NICE or RLIMIT_NICE): for servers embedded in a longer process."""
    if LINUX:
        for tid in native_ids:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, base_niceness())


def _comm(tid: int) -> str | None:
    try:
        return Path(f"/proc/self/task/{tid}/comm").read_text().strip()
    except OSError:
        return None
