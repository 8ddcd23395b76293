"""Abuse benchmark: well-behaved clients next to attackers, against a real server process.

    .venv/bin/python benchmarks/abuse_bench.py                        # small 32x32 model, 60 s
    .venv/bin/python benchmarks/abuse_bench.py --vgg REPO/vgg16-int8/1 --size 224

Phase 1: `--good` clients alone (their p99 latency). Phase 2: the same clients for
`--duration` s while `--attackers` clients send decompression bombs, oversize typed
tensors, int64-overflowing shapes and made-up model names. Reports the good clients'
failures and p99 ratio (attack / alone), the server's peak RSS (VmHWM), the number of
`tl2edge_requests_total` series before and after, and the exit code on SIGTERM. Prints a
table and writes benchmarks/results/abuse.json. Never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "serve"))  # the bomb makers of the tests

from serve_bench import ServerProcess, free_port, write_repo  # noqa: E402
from servekit import jpeg_declaring, png_bomb  # noqa: E402

from tl2edge._proto import classifier_pb2 as cpb  # noqa: E402
from tl2edge._proto import grpc_service_pb2 as pb  # noqa: E402
from tl2edge._proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from tl2edge.host import cpu_name  # noqa: E402

METHODS = {
    "classify": "/tl2edge.v1.Classifier/Classify",
    "kserve": "/inference.GRPCInferenceService/ModelInfer",
}


def attacks(model: str, size: int) -> list[tuple[str, object]]:
    """Requests an attacker sends; serialized once, so attacking costs the client no CPU."""
    out: list[tuple[str, object]] = []
    for data in (png_bomb(12000, 12000), jpeg_declaring(60000, 60000), png_bomb(4900, 4900)):
        request = cpb.ClassifyRequest(model=model)
        request.images.add(encoded=data)
        out.append(("classify", request))
    typed = pb.ModelInferRequest(model_name=model)
    typed.inputs.add(name="image", datatype="UINT8", shape=[1, size, size, 3])
    typed.inputs[0].contents.uint_contents.extend([200] * 2_000_000)
    out.append(("kserve", typed))
    wrapped = pb.ModelInferRequest(model_name=model)
    wrapped.inputs.add(name="image", datatype="UINT8", shape=[2**58 + 1, size, size, 3])
    wrapped.raw_input_contents.append(bytes(size * size * 3))
    out.append(("kserve", wrapped))
    return out


def bogus_name(i: int, size: int) -> tuple[str, object]:
    request = pb.ModelInferRequest(model_name=f"y{i}-{os.urandom(4).hex()}")
    request.inputs.add(name="image", datatype="UINT8", shape=[1, size, size, 3])
    request.raw_input_contents.append(bytes(size * size * 3))
    return "kserve", request


def series(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(1 for line in text.splitlines() if line.startswith("tl2edge_requests_total{"))


def good_clients(address: str, model: str, size: int, n: int, stop: threading.Event):  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    failures: list[str] = []
    pixels = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)

    def run() -> None:
        with grpc.insecure_channel(address) as channel:
            infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            request = pb.ModelInferRequest(model_name=model)
            request.inputs.add(name="image", datatype="UINT8", shape=[1, size, size, 3])
            request.raw_input_contents.append(pixels.tobytes())
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    infer(request, timeout=30)
                    latencies.append(time.perf_counter() - t0)
                except grpc.RpcError as exc:
                    failures.append(exc.code().name)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, latencies, failures


def attackers(
    address: str, model: str, size: int, n: int, stop: threading.Event, rounds: int = 0
) -> tuple:
    """`n` threads sending attacks until `stop` (or, with `rounds`, that many of each kind)."""
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    menu = attacks(model, size)

    wire = [(kind, request.SerializeToString()) for kind, request in menu]  # type: ignore[attr-defined]

    def run(k: int) -> None:
        options = [("grpc.max_send_message_length", 64 * 2**20)]
        with grpc.insecure_channel(address, options=options) as channel:
            calls = {kind: channel.unary_unary(method) for kind, method in METHODS.items()}
            i = k
            while not stop.is_set() and (not rounds or i < k + 3 * len(wire) * rounds * n):
                i += n
                if i % 3:
                    kind, data = wire[i % len(wire)]
                else:
                    kind, request = bogus_name(i, size)
                    data = request.SerializeToString()  # type: ignore[attr-defined]
                try:
                    calls[kind](data, timeout=30)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    outcomes[code] = outcomes.get(code, 0) + 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    return threads, outcomes


def _attack_for(address, model, size, n, seconds, niceness, queue) -> None:  # type: ignore[no-untyped-def]
    os.nice(niceness)
    stop = threading.Event()
    threads, outcomes = attackers(address, model, size, n, stop)
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    queue.put(outcomes)


def attack_in_child(
    address: str, model: str, size: int, n: int, seconds: float, niceness: int
) -> dict[str, int]:
    """`attackers` for `seconds` in a child process at `niceness`; their outcome counts."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(
        target=_attack_for, args=(address, model, size, n, seconds, niceness, queue)
    )
    child.start()
    outcomes = queue.get(timeout=seconds + 120)
    child.join()
    return outcomes


def p99_ms(latencies: list[float]) -> float:
    return float(np.percentile(np.array(latencies) * 1000, 99)) if latencies else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--vgg", type=Path, help="exported version folder or .onnx (default: small model)"
    )
    p.add_argument("--size", type=int, default=32, help="model input size (default 32)")
    p.add_argument("--duration", type=float, default=60.0, help="attack phase seconds (default 60)")
    p.add_argument(
        "--alone", type=float, default=20.0, help="good-clients-alone seconds (default 20)"
    )
    p.add_argument("--attackers", type=int, default=20)
    p.add_argument(
        "--attacker-nice",
        type=int,
        default=0,
        help="0: attackers are threads of this process, at the server's priority (default); "
        "N > 0: they run in a child process at niceness N, so that their own CPU use, which "
        "remote attackers would spend on their machines, is not taken from the server",
    )
    p.add_argument("--good", type=int, default=4)
    p.add_argument(
        "--serve-args", default="", help="extra `tl2edge serve` flags, e.g. '--request-nice 0'"
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "abuse.json")
    args = p.parse_args()
    results: dict = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"{platform.python_version()}",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(),
        "attacker_nice": args.attacker_nice,
        "serve_args": args.serve_args,
    }
    with tempfile.TemporaryDirectory() as tmp:
        source = args.vgg or write_repo(Path(tmp), "small-fp32", args.size, vgg=False)
        results["model"] = (
            str(args.vgg) if args.vgg else f"built: small {args.size}x{args.size} fp32"
        )
        metrics_port = free_port()
        server = ServerProcess(
            source, "--metrics-port", str(metrics_port), *args.serve_args.split()
        )
        address = f"127.0.0.1:{server.port}"
        model = server.client.models()[0].name
        server.client.infer(model, np.zeros((1, args.size, args.size, 3), np.uint8))
        results["rss_idle_mb"] = server.status("VmRSS") / 1024

        stop = threading.Event()
        threads, alone, alone_failures = good_clients(address, model, args.size, args.good, stop)
        time.sleep(args.alone)
        stop.set()
        for t in threads:
            t.join()
        # one round of each attack first: the outcome series it adds by design then exist
        stop = threading.Event()
        warm, _ = attackers(address, model, args.size, 1, stop, rounds=1)
        warm[0].join()
        series_before = series(metrics_port)

        stop = threading.Event()
        threads, attacked, attacked_failures = good_clients(
            address, model, args.size, args.good, stop
        )
        if args.attacker_nice:
            outcomes = attack_in_child(
                address, model, args.size, args.attackers, args.duration, args.attacker_nice
            )
            bad_threads: list[threading.Thread] = []
        else:
            bad_threads, outcomes = attackers(address, model, args.size, args.attackers, stop)
            time.sleep(args.duration)
        stop.set()
        for t in threads + bad_threads:
            t.join()
        series_after = series(metrics_port)
        results.update(
            good_requests_alone=len(alone),
            good_failures_alone=len(alone_failures),
            good_p99_alone_ms=p99_ms(alone),
            good_requests_attacked=len(attacked),
            good_failures_attacked=len(attacked_failures),
            good_failure_codes=sorted(set(attacked_failures)),
            good_p99_attacked_ms=p99_ms(attacked),
            attack_outcomes=outcomes,
            peak_rss_mb=server.status("VmHWM") / 1024,
            request_series_before=series_before,
            request_series_after=series_after,
        )
        results["p99_ratio"] = results["good_p99_attacked_ms"] / results["good_p99_alone_ms"]
        results["exit_code_on_sigterm"] = server.stop()
    r = results
    print(f"good clients: {r['good_requests_alone']} requests alone, p99 {r['good_p99_alone_ms']:.1f} ms; "
          f"under attack {r['good_requests_attacked']}, p99 {r['good_p99_attacked_ms']:.1f} ms "
          f"(x{r['p99_ratio']:.2f}, target <= 3), failures {r['good_failures_attacked']} (target 0)")  # fmt: skip
    print(f"attack outcomes: {r['attack_outcomes']}")
    print(f"peak RSS {r['peak_rss_mb']:.0f} MB (idle {r['rss_idle_mb']:.0f} MB; target <= 600); "
          f"request series {r['request_series_before']} -> {r['request_series_after']}; "
          f"exit code on SIGTERM {r['exit_code_on_sigterm']}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
