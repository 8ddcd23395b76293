"""`grpc.health.v1.Health` whose Watch streams end when the server drains.

grpc's HealthServicer keeps every Watch stream open forever, so a load balancer or a
client watching health would hold a drain until its grace period ran out. Here, once
`enter_graceful_shutdown()` is called, each watcher gets NOT_SERVING and then its stream
closes with UNAVAILABLE, the status clients already retry on another replica.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from grpc_health.v1 import health, health_pb2

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DrainingHealthServicer(health.aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self._drained = asyncio.Event()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING for good; open Watch streams end."""
        await super().enter_graceful_shutdown()
        self._drained.set()

    async def Watch(self, request, context):  # type: ignore[no-untyped-def]
        if not self._drained.is_set():
            watching = asyncio.ensure_future(super().Watch(request, context))
            drained = asyncio.ensure_future(self._drained.wait())
            try:
                await asyncio.wait({watching, drained}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (watching, drained):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if not self._drained.is_set():
                watching.result()  # the watch failed on its own (client gone): its error
                return
        # The watcher may not have seen the last update before it was cancelled: say it.
        await context.write(health_pb2.HealthCheckResponse(status=NOT_SERVING))
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "server is shutting down; watch another replica"
        )
