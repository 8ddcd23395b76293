"""`tl2edge predict`: classify image files with a running server (Classify API)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tl2edge.errors import UserError


def add_client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="localhost:8500", help="HOST:PORT (default localhost:8500)")
    p.add_argument(
        "--tls-ca",
        type=Path,
        help="CA certificate (PEM) that signed the server's certificate; turns on TLS",
    )
    p.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS (PEM)")
    p.add_argument("--tls-key", type=Path, help="client private key for mutual TLS (PEM)")
    p.add_argument("--token-file", type=Path, help="file with the bearer token the server requires")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="JPEG/PNG/BMP/GIF files")
    p.add_argument("--model", help="model name (default: the server's default model)")
    p.add_argument("--model-version", help="version (default: the latest loaded)")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_client_arguments(p)


def make_client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from tl2edge.client import Client

    token = None
    if args.token_file:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise UserError(f"--token-file {args.token_file}: {exc.strerror}") from exc
    for flag in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise UserError(f"--{flag.replace('_', '-')} {path}: no such file")
    return Client(
        args.server,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token=token,
        timeout=args.timeout,
    )


def rpc_failure(server: str, exc: Exception) -> UserError:
    code = exc.code().name if hasattr(exc, "code") else "ERROR"  # type: ignore[union-attr]
    details = exc.details() if hasattr(exc, "details") else str(exc)  # type: ignore[union-attr]
    return UserError(f"server {server}: {code}: {details}")


def predict(args: argparse.Namespace) -> list[dict]:
    """The CLI's Python API: one {image, model, predictions} per image."""
    import grpc

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1 (got {args.top_k})")
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise UserError(f"no such image file(s): {', '.join(missing)}")
    images = [p.read_bytes() for p in args.images]
    with make_client(args) as client:
        try:
            rows = client.classify(images, args.model, args.top_k, version=args.model_version)
        except grpc.RpcError as exc:
            raise rpc_failure(args.server, exc) from None
    return [
        {"image": str(path), "predictions": [p._asdict() for p in preds]}
        for path, preds in zip(args.images, rows, strict=True)
    ]


def run(args: argparse.Namespace) -> int:
    results = predict(args)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return 0
    width = max(len(r["image"]) for r in results)
    print(f"{'image':<{width}}  rank  {'label':<20}  score")
    for r in results:
        for rank, p in enumerate(r["predictions"], 1):
            image = r["image"] if rank == 1 else ""
            print(f"{image:<{width}}  {rank:>4}  {p['label']:<20}  {p['score']:.4f}")
    return 0
