"""Domain errors of the server and the one place that turns them into gRPC statuses.

The data plane raises these; servicer methods are wrapped by `rpc_errors` (unary) and
`stream_error_text` (per-message errors of streams), so no servicer has its own
try/except. Anything else is a bug: the client gets INTERNAL with a generic message and a
reference, the log gets the traceback, and the server keeps serving.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

log = logging.getLogger("tl2edge.serve.errors")


class ServeError(Exception):
    """A request that cannot be served; the message tells the caller what to change."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidInput(ServeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServeError):
    code = grpc.StatusCode.NOT_FOUND


class Overloaded(ServeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServeError):
    code = grpc.StatusCode.UNAVAILABLE


class NotAllowed(ServeError):
    """The server's configuration rules this request out (e.g. model control is off)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


MAX_MESSAGE = 2000  # characters; a status message travels in a size-limited trailer


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message a client gets for `exc`."""
    if isinstance(exc, ServeError):
        message = str(exc)
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + "..."
        return exc.code, message
    ref = uuid.uuid4().hex[:12]
    log.error("internal error", exc_info=exc, extra={"ref": ref})
    return grpc.StatusCode.INTERNAL, f"internal server error (ref {ref}; details in the server log)"


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def rpc_errors(method: F) -> F:
    """Wrap an async unary servicer method: ServeError -> its status, other errors -> INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as exc:  # a request must never take the server down
            code, message = status_of(exc)
            await context.abort(code, message)

    return wrapper  # type: ignore[return-value]


def stream_error_text(exc: BaseException) -> str:
    """The per-message error of a stream response: 'INVALID_ARGUMENT: ...'."""
    code, message = status_of(exc)
    return f"{code.name}: {message}"
