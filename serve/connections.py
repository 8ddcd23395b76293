"""How the server treats HTTP/2 connections: keepalive, connection age and idle, streams.

The defaults suit replicas behind a Kubernetes Service: keepalive pings find clients that
vanished without closing (a camera that lost power), a maximum connection age makes
long-lived clients reconnect now and then so new replicas get their share, open streams
are never cut by that (the age grace is unlimited unless set), and one connection cannot
open more streams than `max_concurrent_streams`. Also: listen addresses (IPv6 included),
shared by the gRPC port and the metrics endpoint.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from tl2edge.errors import UserError


@dataclass(frozen=True)
class ConnectionConfig:
    keepalive_s: float = 60.0  # ping a connection silent this long
    keepalive_timeout_s: float = 20.0  # close it if the ping is not answered in time
    min_client_ping_s: float = 10.0  # clients may ping this often (also without calls)
    max_connection_age_s: float = 1800.0  # 0 = unlimited
    max_connection_age_grace_s: float = 0.0  # after the age, for open streams; 0 = unlimited
    max_connection_idle_s: float = 900.0  # close connections with no call this long; 0 = never
    max_concurrent_streams: int = 100  # per connection

    def __post_init__(self) -> None:
        times = {
            "--keepalive-s": self.keepalive_s,
            "--keepalive-timeout-s": self.keepalive_timeout_s,
            "--min-client-ping-s": self.min_client_ping_s,
            "--max-connection-age-s": self.max_connection_age_s,
            "--max-connection-age-grace-s": self.max_connection_age_grace_s,
            "--max-connection-idle-s": self.max_connection_idle_s,
        }
        negative = [f"{flag} {value:g}" for flag, value in times.items() if value < 0]
        if negative:
            raise UserError(f"{', '.join(negative)}: times must be >= 0 seconds (0 = never)")
        if self.keepalive_s == 0 or self.keepalive_timeout_s == 0:
            raise UserError(
                f"--keepalive-s {self.keepalive_s:g}, --keepalive-timeout-s "
                f"{self.keepalive_timeout_s:g}: both must be more than 0"
            )
        if self.max_concurrent_streams < 1:
            raise UserError(
                f"--max-concurrent-streams ({self.max_concurrent_streams}) must be at least 1"
            )

    def options(self) -> list[tuple[str, int]]:
        """grpc server channel arguments."""

        def ms(seconds: float) -> int:
            return int(seconds * 1000)

        out = [
            ("grpc.keepalive_time_ms", ms(self.keepalive_s)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_s)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_client_ping_s)),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
        ]
        if self.max_connection_age_s:
            out.append(("grpc.max_connection_age_ms", ms(self.max_connection_age_s)))
        if self.max_connection_age_grace_s:
            out.append(("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace_s)))
        if self.max_connection_idle_s:
            out.append(("grpc.max_connection_idle_ms", ms(self.max_connection_idle_s)))
        return out


# -- listen addresses ---------------------------------------------------------------------
def unbracket(host: str) -> str:
    """`[::]` -> `::` (the URL form of an IPv6 address is what people type)."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def host_port(host: str, port: int) -> str:
    """`host:port` as gRPC and URLs want it: IPv6 addresses in brackets."""
    host = unbracket(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_family(host: str, port: int, *, flag: str) -> socket.AddressFamily:
    """The socket family to listen on `host` with; one clear error if it is no address."""
    try:
        infos = socket.getaddrinfo(
            unbracket(host), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(
            f"{flag} {host!r} is not an address or name of this machine ({exc}); "
            f"use e.g. 127.0.0.1, 0.0.0.0 or [::]"
        ) from None
    return infos[0][0]
