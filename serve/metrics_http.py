"""The /metrics HTTP endpoint: Prometheus text, with the gRPC API's TLS and bearer token.

prometheus-client renders the registry (`make_wsgi_app`); the standard library serves it
on a thread. prometheus-client's own `start_http_server` is not used because it has no
authentication and resolves the host itself (`[::]` fails there), so a bad host or a busy
port ends in a traceback instead of a sentence.

Security follows the gRPC API: with `--tls-cert/--tls-key` the endpoint speaks HTTPS with
the same certificate (and requires client certificates with `--tls-client-ca`); with
`--auth-token-file` a scrape must send `Authorization: Bearer <token>` (Prometheus:
`authorization: {credentials_file: ...}`).
"""

from __future__ import annotations

import errno
import hmac
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from tl2edge.errors import UserError
from tl2edge.serve.connections import address_family, host_port, unbracket


def require_bearer(app: Callable, token: str) -> Callable:
    """WSGI middleware: 401 unless `Authorization: Bearer <token>` (constant-time compare)."""
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        sent = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if hmac.compare_digest(sent, expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
        )
        return [b"send 'Authorization: Bearer <token>' (the server's --auth-token-file)\n"]

    return guarded


class _Quiet(WSGIRequestHandler):
    timeout = 10  # a client that connects and says nothing does not hold a thread for good

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes every few seconds would drown the server log


class MetricsServer:
    """A started /metrics endpoint; `close()` stops it."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
        token: str | None = None,
    ) -> None:
        app = make_wsgi_app(registry)
        if token:
            app = require_bearer(app, token)
        family = address_family(host, port, flag="--metrics-host")

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True
            address_family = family

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that fails the TLS handshake or hangs up is not our error

        bare = unbracket(host)
        try:
            self._httpd = Server((bare, port), _Quiet, bind_and_activate=False)
            try:
                if family == socket.AF_INET6 and bare in ("::", ""):
                    # `::` takes IPv4 clients too, whatever the system default.
                    self._httpd.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                self._httpd.server_bind()
                self._httpd.server_activate()
            except BaseException:
                self._httpd.server_close()
                raise
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"metrics port {port} on {host} is in use; pick another --metrics-port "
                    f"(or -1 for no metrics endpoint)"
                ) from None
            raise UserError(
                f"cannot serve metrics on {host_port(host, port)}: {exc.strerror or exc}"
            ) from None
        self._httpd.set_app(app)
        if tls_cert:
            self._httpd.socket = _tls_context(tls_cert, tls_key, tls_client_ca).wrap_socket(
                self._httpd.socket,
                server_side=True,
                do_handshake_on_connect=False,  # handshake in the request thread, not accept()
            )
        self.port = int(self._httpd.server_address[1])
        self.scheme = "https" if tls_cert else "http"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def _tls_context(cert: Path, key: Path | None, client_ca: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key) if key else None)
        if client_ca:
            context.load_verify_locations(str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"metrics TLS: cannot use {cert} / {key} / {client_ca}: {exc}") from None
    return context
