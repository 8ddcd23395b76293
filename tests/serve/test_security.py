"""TLS, mutual TLS and bearer tokens, with certificates generated here (cryptography).

Run: .venv/bin/pytest tests/serve/test_security.py -q
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from servekit import ServerThread, random_pixels

from tl2edge.client import Client
from tl2edge.serve.server import ServeConfig


def _cert(name: str, issuer_key=None, issuer_name=None, *, ca: bool = False):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(path: Path, key=None, cert=None) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    if key is not None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    else:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _cert("test-ca", ca=True)
    out = {}
    for name in ("server", "client"):
        key, cert = _cert(name, ca_key, ca_cert.subject)
        _write(d / f"{name}.key", key=key)
        _write(d / f"{name}.crt", cert=cert)
        out[f"{name}_key"], out[f"{name}_crt"] = d / f"{name}.key", d / f"{name}.crt"
    _write(d / "ca.crt", cert=ca_cert)
    out["ca"] = d / "ca.crt"
    return out


def test_tls(repo, pki):
    config = ServeConfig(tls_cert=pki["server_crt"], tls_key=pki["server_key"])
    with ServerThread(repo, config=config) as s:
        with Client(s.address, tls_ca=pki["ca"]) as c:
            assert c.health() == "SERVING"
            assert c.classify([random_pixels(1)[0]])[0]
        with Client(s.address, timeout=2) as plain, pytest.raises(grpc.RpcError) as exc:
            plain.classify([random_pixels(1)[0]])
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(repo, pki):
    config = ServeConfig(
        tls_cert=pki["server_crt"], tls_key=pki["server_key"], tls_client_ca=pki["ca"]
    )
    with ServerThread(repo, config=config) as s:
        with Client(
            s.address, tls_ca=pki["ca"], tls_cert=pki["client_crt"], tls_key=pki["client_key"]
        ) as c:
            assert c.classify([random_pixels(1)[0]])[0]
        with (
            Client(s.address, tls_ca=pki["ca"], timeout=2) as no_cert,
            pytest.raises(grpc.RpcError) as exc,
        ):
            no_cert.classify([random_pixels(1)[0]])
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bearer_token(repo):
    token = "s3cret-token-0123456789"
    with ServerThread(repo, config=ServeConfig(auth_token=token)) as s:
        with Client(s.address) as anonymous:
            assert anonymous.health() == "SERVING"  # health stays open for probes
            for call in (
                lambda: anonymous.classify([random_pixels(1)[0]]),
                lambda: anonymous.infer("tiny-int8", random_pixels(1)),
                lambda: list(anonymous.classify_stream([[random_pixels(1)[0]]])),
            ):
                with pytest.raises(grpc.RpcError) as exc:
                    call()
                assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "authorization" in exc.value.details()
        with (
            Client(s.address, token="wrong-token-0123456789") as wrong,
            pytest.raises(grpc.RpcError) as exc,
        ):
            wrong.classify([random_pixels(1)[0]])
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with Client(s.address, token=token) as good:
            assert good.classify([random_pixels(1)[0]])[0]
            assert len(list(good.classify_stream([[random_pixels(1)[0]]]))) == 1


def _scrape(url: str, *, token: str | None = None, context=None) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_metrics_endpoint_uses_the_api_tls_and_token(repo, pki):
    import ssl
    import urllib.error

    token = "s3cret-token-0123456789"
    config = ServeConfig(
        tls_cert=pki["server_crt"], tls_key=pki["server_key"], auth_token=token, metrics_port=0
    )
    with ServerThread(repo, config=config) as s:
        url = f"https://127.0.0.1:{s.server.metrics_port}/metrics"
        trusted = ssl.create_default_context(cafile=str(pki["ca"]))
        status, body = _scrape(url, token=token, context=trusted)
        assert status == 200 and b"tl2edge_ready 1.0" in body
        assert _scrape(url, context=trusted)[0] == 401
        assert _scrape(url, token="wrong-token-0123456789", context=trusted)[0] == 401
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plain HTTP
            _scrape(url.replace("https", "http"), token=token)
        with pytest.raises(urllib.error.URLError):  # nor HTTPS the client cannot verify
            _scrape(url, token=token, context=ssl.create_default_context())


def test_metrics_endpoint_mutual_tls(repo, pki):
    import ssl
    import urllib.error

    config = ServeConfig(
        tls_cert=pki["server_crt"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca"],
        metrics_port=0,
    )
    with ServerThread(repo, config=config) as s:
        url = f"https://127.0.0.1:{s.server.metrics_port}/metrics"
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            _scrape(url, context=context)
        context.load_cert_chain(str(pki["client_crt"]), str(pki["client_key"]))
        assert _scrape(url, context=context)[0] == 200
