"""`tl2edge health`: exit 0 only when the server (or a model) reports SERVING.

For container health checks: `tl2edge health --server localhost:8500` prints the state and
exits 1 for NOT_SERVING, an unknown model, or a server that does not answer.
"""

from __future__ import annotations

import argparse

from tl2edge.client_cli import add_client_arguments, make_client


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="check one model instead of the whole server")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="keep trying up to S seconds for SERVING (default 0: ask once)",
    )
    add_client_arguments(p)  # fmt: skip
    p.set_defaults(timeout=5.0)


def run(args: argparse.Namespace) -> int:
    import grpc

    with make_client(args) as client:
        try:
            if args.wait > 0:
                client.wait_until_serving(args.wait, model=args.model)
                state = "SERVING"
            else:
                state = client.health(args.model)
        except TimeoutError as exc:
            print(f"{args.server}: {exc}")
            return 1
        except grpc.RpcError as exc:
            print(f"{args.server}: {exc.code().name}: {exc.details()}")
            return 1
    print(f"{args.server}{' ' + args.model if args.model else ''}: {state}")
    return 0 if state == "SERVING" else 1
