"""How the server treats HTTP/2 connections: keepalive, connection age and idle, streams.

The defaults suit replicas behind a Kubernetes Service: keepalive pings find clients that
vanished without closing (a camera that lost power), a maximum connection age makes
long-lived clients reconnect now and then so new replicas get their share, open streams
are never cut by that (the age grace is unlimited unless set), and one connection cannot
open more streams than `max_concurrent_streams`.
"""

from __future__ import annotations

from dataclasses import dataclass


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
            raise ValueError(f"{', '.join(negative)}: times must be >= 0 seconds")
        if self.keepalive_s == 0 or self.keepalive_timeout_s == 0:
            raise ValueError("--keepalive-s and --keepalive-timeout-s must be more than 0")
        if self.max_concurrent_streams < 1:
            raise ValueError(
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
