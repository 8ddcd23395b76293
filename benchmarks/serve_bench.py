"""Serving benchmarks: gRPC overhead, batched throughput, memory, start-up and a soak run.

    .venv/bin/python benchmarks/serve_bench.py                  # everything (~10 min on 2 cores)
    .venv/bin/python benchmarks/serve_bench.py --vgg REPO/vgg16-int8/1 --soak 20000

Every comparison is side by side in one run: the server (`tl2edge serve`, a subprocess)
against in-process ONNX Runtime on the same model and inputs. `--vgg` takes an exported
version folder or .onnx file; without it a VGG16-shaped model (the 13 conv layers of
VGG16 + global pooling + a dense head, random weights, fp32) is built with onnx.helper.
Prints a table and writes benchmarks/results/serve.json. Never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tl2edge import manifest as mf
from tl2edge.client import Client

ROOT = Path(__file__).resolve().parents[1]
VGG_BLOCKS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]


def build_onnx(size: int, classes: int, *, vgg: bool, seed: int = 0) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], [helper.make_node("Cast", ["image"], ["x0"], to=TensorProto.FLOAT)]
    nodes.append(helper.make_node("Transpose", ["x0"], ["x"], perm=[0, 3, 1, 2]))
    last, channels = "x", 3
    if vgg:
        for b, (width, convs) in enumerate(VGG_BLOCKS):
            for c in range(convs):
                name = f"b{b}c{c}"
                w = rng.normal(0, np.sqrt(2 / (9 * channels)), (width, channels, 3, 3)) / 64
                inits += [numpy_helper.from_array(w.astype(np.float32), f"{name}w"),
                          numpy_helper.from_array(np.zeros(width, np.float32), f"{name}b")]  # fmt: skip
                nodes.append(
                    helper.make_node(
                        "Conv", [last, f"{name}w", f"{name}b"], [f"{name}y"], pads=[1, 1, 1, 1]
                    )
                )
                nodes.append(helper.make_node("Relu", [f"{name}y"], [f"{name}r"]))
                last, channels = f"{name}r", width
            nodes.append(
                helper.make_node("MaxPool", [last], [f"p{b}"], kernel_shape=[2, 2], strides=[2, 2])
            )
            last = f"p{b}"
    nodes.append(helper.make_node("GlobalAveragePool", [last], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["feat"]))
    inits += [numpy_helper.from_array(rng.normal(0, 0.05, (channels, classes)).astype(np.float32), "hw"),
              numpy_helper.from_array(np.zeros(classes, np.float32), "hb")]  # fmt: skip
    nodes += [helper.make_node("MatMul", ["feat", "hw"], ["l0"]), helper.make_node("Add", ["l0", "hb"], ["l1"]),
              helper.make_node("Softmax", ["l1"], ["probs"], axis=-1)]  # fmt: skip
    graph = helper.make_graph(
        nodes, "bench",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def write_repo(repo: Path, name: str, size: int, *, vgg: bool) -> Path:
    vdir = repo / name / "1"
    vdir.mkdir(parents=True)
    (vdir / mf.MODEL_FILE).write_bytes(build_onnx(size, 5, vgg=vgg))
    m = mf.Manifest(
        name=name, version=1, variant="fp32", labels=[f"c{i}" for i in range(5)],
        input=mf.TensorSpec("image", "UINT8", [-1, size, size, 3]),
        output=mf.TensorSpec("probs", "FP32", [-1, 5]), sha256=mf.sha256_file(vdir / mf.MODEL_FILE),
    )  # fmt: skip
    (vdir / mf.MANIFEST).write_text(m.to_json())
    return vdir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, source: Path, *extra: str) -> None:
        self.port = free_port()
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tl2edge", "serve", "--model", str(source), "--host", "127.0.0.1",
             "--port", str(self.port), "--metrics-port", "-1", "--log-level", "WARNING", *extra],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.client = Client(f"127.0.0.1:{self.port}", timeout=600)
        self.client.wait_until_serving(120)
        self.startup_s = time.perf_counter() - self.t0

    def status(self, key: str) -> int:
        """kB from /proc/PID/status (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def imports_tensorflow(self) -> bool:
        maps = Path(f"/proc/{self.proc.pid}/maps").read_text()
        return "tensorflow" in maps or "keras" in maps

    def stop(self) -> int:
        self.client.close()
        self.proc.terminate()
        return self.proc.wait(60)


def p50_ms(times: list[float]) -> float:
    return float(np.percentile(np.array(times) * 1000, 50))


def overhead(source: Path, size: int, n: int) -> dict:
    session = ort.InferenceSession(str(source / mf.MODEL_FILE), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    server = ServerProcess(source)
    local, remote = [], []
    for _ in range(20):
        session.run(None, {"image": x})
        server.client.infer(source.parent.name, x)
    for _ in range(n):  # interleaved, so both see the same machine load
        t = time.perf_counter()
        session.run(None, {"image": x})
        local.append(time.perf_counter() - t)
        t = time.perf_counter()
        server.client.infer(source.parent.name, x)
        remote.append(time.perf_counter() - t)
    server.stop()
    return {"ort_p50_ms": p50_ms(local), "grpc_p50_ms": p50_ms(remote),
            "overhead_ms": p50_ms(remote) - p50_ms(local), "target_ms": 1.0, "requests": n}  # fmt: skip


def throughput(
    source: Path,
    size: int,
    requests: int,
    concurrency: int = 16,
    max_batch: int = 8,
    rounds: int = 3,
) -> dict:
    """Served vs in-process throughput, interleaved in `rounds` so both see the same load.

    Each round times in-process ORT at every batch size 1..max_batch (same session options
    as the server) and then `requests` concurrent unary requests to the server; the ratio is
    the median over rounds of served / best in-process. Both sides are warmed up first.
    """
    name = source.parent.name if source.is_dir() else source.stem
    model_file = source / mf.MODEL_FILE if source.is_dir() else source
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    batches = {
        b: rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8) for b in range(1, max_batch + 1)
    }
    for x in batches.values():
        session.run(None, {"image": x})
    server = ServerProcess(source, "--max-batch-size", str(max_batch))
    startup = server.startup_s
    images = rng.integers(0, 256, (concurrency, 1, size, size, 3), dtype=np.uint8)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.status("VmRSS"))
            time.sleep(0.05)

    def served_run(n: int) -> float:
        t = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda i: server.client.infer(name, images[i % concurrency]), range(n)))
        return n / (time.perf_counter() - t)

    sampler = threading.Thread(target=sample)
    sampler.start()
    served_run(4 * concurrency)  # warm-up: every batch size the server will see
    by_round = []
    for _ in range(rounds):
        per_batch = {}
        for b, x in batches.items():
            runs = max(2, requests // b)
            t = time.perf_counter()
            for _ in range(runs):
                session.run(None, {"image": x})
            per_batch[b] = runs * b / (time.perf_counter() - t)
        served = served_run(requests)
        best_b = max(per_batch, key=per_batch.get)
        by_round.append({"ort_images_per_s_by_batch": per_batch, "ort_best_batch": best_b,
                         "ort_best": per_batch[best_b], "served_images_per_s": served,
                         "ratio": served / per_batch[best_b]})  # fmt: skip
        print(f"  round {len(by_round)}: ORT best {per_batch[best_b]:.1f} img/s (batch {best_b}), "
              f"served {served:.1f} img/s, ratio {served / per_batch[best_b]:.3f}", flush=True)  # fmt: skip
    done.set()
    sampler.join()
    hwm = server.status("VmHWM")
    tf = server.imports_tensorflow()
    server.stop()
    median = statistics.median
    return {
        "model": str(source), "image_size": size, "requests": requests, "concurrency": concurrency,
        "rounds": by_round, "ort_best": median(r["ort_best"] for r in by_round),
        "served_images_per_s": median(r["served_images_per_s"] for r in by_round),
        "ratio": median(r["ratio"] for r in by_round), "target_ratio": 0.95,
        "peak_rss_mb": max(hwm, peak[0]) / 1024, "target_rss_mb": 300, "imports_tensorflow": tf,
        "startup_to_serving_s": startup, "target_startup_s": 3.0,
    }  # fmt: skip


def soak(source: Path, size: int, requests: int, concurrency: int = 32) -> dict:
    server = ServerProcess(source)
    x = np.random.default_rng(2).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    name = source.parent.name
    failures, rss = [], []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            server.client.infer(name, x)
        except Exception as exc:  # counted, never raised: this is a soak test
            with lock:
                failures.append(repr(exc)[:200])
        if i % max(1, requests // 40) == 0:
            rss.append((i, server.status("VmRSS")))

    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    elapsed = time.perf_counter() - t
    server.stop()
    rss.sort()
    quarter = max(1, len(rss) // 4)
    first = float(np.mean([r for _, r in rss[:quarter]]))
    last = float(np.mean([r for _, r in rss[-quarter:]]))
    return {"requests": requests, "concurrency": concurrency, "failures": len(failures),
            "failure_examples": failures[:3], "requests_per_s": requests / elapsed,
            "rss_first_quarter_mb": first / 1024, "rss_last_quarter_mb": last / 1024,
            "rss_growth": last / first - 1, "target_growth": 0.10}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--vgg", type=Path, help="exported VGG16 int8 version folder or .onnx (default: build one)"
    )
    p.add_argument("--vgg-size", type=int, default=224)
    p.add_argument(
        "--requests", type=int, default=256, help="throughput requests per round (default 256)"
    )
    p.add_argument("--overhead-requests", type=int, default=1000)
    p.add_argument(
        "--soak", type=int, default=20000, help="soak requests (default 20000; 0 = skip)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    args = p.parse_args()
    results: dict = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, "
        f"onnxruntime {ort.__version__}",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        small = write_repo(Path(tmp), "small-fp32", 32, vgg=False)
        results["overhead"] = overhead(small, 32, args.overhead_requests)
        print(f"overhead: ORT p50 {results['overhead']['ort_p50_ms']:.3f} ms, gRPC p50 "
              f"{results['overhead']['grpc_p50_ms']:.3f} ms -> +{results['overhead']['overhead_ms']:.3f} ms (target <= 1)", flush=True)  # fmt: skip
        vgg = args.vgg or write_repo(Path(tmp), "vgg16shape-fp32", args.vgg_size, vgg=True)
        results["vgg_source"] = (
            "given" if args.vgg else "built: VGG16 conv trunk + GAP head, fp32, random weights"
        )
        t = results["throughput"] = throughput(vgg, args.vgg_size, args.requests)
        print(f"throughput (median of {len(t['rounds'])} rounds): ORT best {t['ort_best']:.2f} img/s, served "
              f"{t['served_images_per_s']:.2f} img/s at c=16 -> ratio {t['ratio']:.3f} (target >= 0.95)", flush=True)  # fmt: skip
        print(
            f"memory: peak RSS {t['peak_rss_mb']:.0f} MB (target <= 300), TensorFlow loaded: {t['imports_tensorflow']}"
        )
        print(f"start-up to SERVING: {t['startup_to_serving_s']:.2f} s (target <= 3)", flush=True)
        if args.soak:
            s = results["soak"] = soak(small, 32, args.soak)
            print(f"soak: {s['requests']} requests c=32, {s['failures']} failures, {s['requests_per_s']:.0f} req/s, "
                  f"RSS {s['rss_first_quarter_mb']:.0f} -> {s['rss_last_quarter_mb']:.0f} MB ({s['rss_growth']:+.1%}, target <= +10%)")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
