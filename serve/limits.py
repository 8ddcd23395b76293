"""Memory bounds of the server: request shapes, bytes in flight, image sizes.

Every size a client declares (tensor shape, image header) is checked with Python ints,
before anything is allocated for it, against these limits; what a request will hold while
it is served (its message, the decoded pixels) is counted against one per-server budget,
`--max-inflight-mb`, and a request that would pass it gets RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence

from tl2edge.serve.errors import InvalidInput, Overloaded

MAX_RANK = 8  # dimensions of an input tensor
MAX_DIM = 2**31 - 1  # size of one dimension
MAX_SHOWN = 80  # characters of a client string quoted back in an error message


def shown(text: str) -> str:
    """A client string fit for an error message: quoted, and cut if long."""
    if len(text) <= MAX_SHOWN:
        return repr(text)
    return f"{text[:MAX_SHOWN]!r}... ({len(text):,} characters)"


def element_count(shape: Sequence[int]) -> int:
    """The number of elements of `shape`, refused if any dimension is out of range.

    Python ints, so [2**58 + 1, 32, 32, 3] is a large number rather than a product that
    wraps around in int64 and happens to match the payload.
    """
    dims = list(shape)
    if len(dims) > MAX_RANK:
        raise InvalidInput(
            f"input shape has {len(dims)} dimensions; at most {MAX_RANK} are accepted"
        )
    for d in dims:
        if d < 0:
            raise InvalidInput(f"input shape {dims} has a negative dimension")
        if d > MAX_DIM:
            raise InvalidInput(f"input shape {dims} has a dimension above {MAX_DIM}")
    return math.prod(dims)


class ByteBudget:
    """Bytes held by requests being served, bounded; thread-safe (decoders take from it too)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"byte budget ({limit}) must be at least 1")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, nbytes: int, what: str = "request") -> Iterator[None]:
        """Hold `nbytes` for the duration, or raise Overloaded if they do not fit now."""
        nbytes = max(0, int(nbytes))
        with self._lock:
            if self.used + nbytes > self.limit:
                mb = self.limit / 2**20
                if nbytes > self.limit:
                    raise Overloaded(
                        f"{what} needs {nbytes / 2**20:.1f} MB, more than the server's "
                        f"{mb:.0f} MB for requests in flight (--max-inflight-mb); send less at once"
                    )
                raise Overloaded(
                    f"server is at its limit of {mb:.0f} MB of requests in flight "
                    f"(--max-inflight-mb); retry with backoff"
                )
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._lock:
                self.used -= nbytes
