"""`grpc.health.v1.Health` whose Watch streams end when the server drains.

grpc's HealthServicer keeps every Watch stream open forever, so a load balancer or a
client watching health would hold a drain until its grace period ran out. Here, once
`enter_graceful_shutdown()` is called, each watcher gets NOT_SERVING and then its stream
closes with UNAVAILABLE, the status clients already retry on another replica. Check and
the statuses themselves stay grpc's.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class DrainingHealthServicer(health.aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._drained = False

    async def set(self, service: str, status: int) -> None:  # type: ignore[override]
        await super().set(service, status)
        if not self._drained:
            async with self._changed:
                self._statuses[service] = status
                self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING for good; open Watch streams end."""
        await super().enter_graceful_shutdown()
        async with self._changed:
            self._drained = True
            self._changed.notify_all()

    async def Watch(self, request, context):  # type: ignore[no-untyped-def]
        last = None
        while True:
            async with self._changed:
                while not self._drained and self._status(request.service) == last:
                    await self._changed.wait()
                status, drained = self._status(request.service), self._drained
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if drained:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "server is shutting down; watch another replica"
                )

    def _status(self, service: str) -> int:
        if self._drained:
            return NOT_SERVING
        return self._statuses.get(service, SERVICE_UNKNOWN)
