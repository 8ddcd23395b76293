"""Build the serving image with buildah and run `tl2edge serve` in it for real.

    sudo .venv/bin/pytest tests/container -q -s      (CI runs as root)

No Docker engine or registry is needed: scripts/build-image.sh builds the Dockerfile on a
local Debian base that scripts/container-base.sh debootstraps once per machine (and
installs buildah and debootstrap with apt if they are missing). Layers are cached, so a
second run only rebuilds what changed.

The server runs with `buildah run --isolation chroot`, which shares the host's network and
PID namespace: the test talks gRPC to it on a free loopback port from the host, and sends
SIGTERM straight to the server process, as a container runtime would to PID 1.
Without root the test fails (it does not skip): CI must run it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "serve"))

from models import LABELS, reference, write_version  # noqa: E402

from tl2edge import manifest as mf  # noqa: E402

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1800)]

TAG = "localhost/tl2edge:test"
SIZE_TARGET_MB = 560  # with the OpenVINO execution provider plugin (~160 MB)
UID = 10001
MODEL = "tiny-int8"


# ---- helpers ---------------------------------------------------------------------------


def run(cmd: list[str], *, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def buildah_run(
    container: str,
    *cmd: str,
    env: dict[str, str] | None = None,
    volumes: dict[Path, str] | None = None,
) -> list[str]:
    """The `buildah run` command line: chroot isolation, host network, image user and env."""
    out = ["buildah", "run", "--isolation", "chroot"]
    for host, inside in (volumes or {}).items():
        out += ["-v", f"{host}:{inside}:ro"]
    for key, value in (env or {}).items():
        out += ["-e", f"{key}={value}"]
    return [*out, container, "--", *cmd]


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):  # every thread forks
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += children
            todo += children
    return out


def server_pid(buildah_pid: int, timeout: float = 30) -> int:
    """The server's host PID: the python process among the descendants of `buildah run`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in descendants(buildah_pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"python") and any(b"tl2edge-entrypoint" in a for a in argv):
                return pid
        time.sleep(0.2)
    raise TimeoutError("no server process under buildah run")


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))


class Server:
    """`tl2edge-entrypoint` (= `tl2edge serve` + TL2EDGE_* env) running in a container."""

    def __init__(self, container: str, repo: Path | None, log: Path, *args: str) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        env = {
            "TL2EDGE_HOST": "127.0.0.1",
            "TL2EDGE_PORT": str(self.port),
            "TL2EDGE_METRICS_PORT": str(self.metrics_port),
            "TL2EDGE_GRACE_S": "10",
        }
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(
                buildah_run(
                    container,
                    "tl2edge-entrypoint",
                    *args,
                    env=env,
                    volumes={repo: "/models"} if repo else None,
                ),
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        self.address = f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout: float = 120) -> None:
        from tl2edge.client import Client

        with Client(self.address) as client:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"server exited {self.proc.returncode}:\n{self.log.read_text()}")
                try:
                    client.wait_until_serving(timeout=1)
                    return
                except TimeoutError:
                    pass
        pytest.fail(f"not SERVING after {timeout} s:\n{self.log.read_text()}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to the server (as a runtime does to PID 1); kill everything if it hangs."""
        if self.proc.poll() is None:
            with contextlib.suppress(TimeoutError, ProcessLookupError):
                os.kill(server_pid(self.proc.pid, timeout=10), signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in reversed(descendants(self.proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(10)
            return -signal.SIGKILL


# ---- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> str:
    if os.geteuid() != 0:
        pytest.fail(
            "tests/container needs root (buildah with chroot isolation, debootstrap); "
            "run `sudo .venv/bin/pytest tests/container` or deselect with -m 'not container'"
        )
    start = time.monotonic()
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-image.sh"), "-t", TAG],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if proc.returncode != 0:
        pytest.fail(f"image build failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    print(f"\nimage {TAG} built in {time.monotonic() - start:.0f} s")
    return TAG


@pytest.fixture(scope="module")
def container(image: str):
    name = run(["buildah", "from", "--pull-never", image]).stdout.strip()
    yield name
    run(["buildah", "rm", name], check=False)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    write_version(repo, MODEL, 1)
    repo.chmod(0o755)  # readable by the image's non-root user
    for p in repo.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return repo


@pytest.fixture(scope="module")
def server(container: str, repo: Path, tmp_path_factory):
    srv = Server(container, repo, tmp_path_factory.mktemp("log") / "server.log")
    srv.wait_serving()
    yield srv
    srv.stop()


def inside(container: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return run(buildah_run(container, *cmd, **kw), check=False, timeout=120)


# ---- the image -------------------------------------------------------------------------


def test_image_size_and_config(image):
    (info,) = json.loads(run(["buildah", "images", "--json", image]).stdout)
    number, unit = re.fullmatch(r"([\d.]+)\s*([kMG]?B)", info["size"]).groups()
    size_mb = float(number) * {"B": 1e-6, "kB": 1e-3, "MB": 1, "GB": 1e3}[unit]
    print(f"\nimage {image}: {size_mb:.0f} MB uncompressed (target <= {SIZE_TARGET_MB} MB)")
    assert size_mb <= SIZE_TARGET_MB, f"image is {size_mb:.0f} MB, target {SIZE_TARGET_MB} MB"

    config = json.loads(run(["buildah", "inspect", "--type", "image", image]).stdout)["Docker"]
    config = config["config"]
    assert config["User"] == f"{UID}:{UID}"
    assert {"8500/tcp", "9090/tcp"} <= set(config["ExposedPorts"])
    assert config["Entrypoint"] == ["tl2edge-entrypoint"]
    assert config["Healthcheck"]["Test"] == ["CMD", "tl2edge-entrypoint", "--healthcheck"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["TL2EDGE_REPOSITORY"] == "/models"


def test_runtime_has_serving_only(container):
    """No TensorFlow, no pip, no compilers or caches; the default user is not root."""
    probe = (
        "import importlib.util as u, os, shutil, sys\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx', 'pip', 'setuptools')"
        " if u.find_spec(m)))\n"
        "print(sorted(c for c in ('gcc', 'cc', 'g++', 'make') if shutil.which(c)))\n"
        "print(os.getuid())\n"
        "import tl2edge.serve.server, onnxruntime, grpc\n"
        "print(onnxruntime.get_available_providers())\n"
    )
    proc = inside(container, "python", "-c", probe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found, compilers, uid, providers = proc.stdout.strip().splitlines()[-4:]
    why = proc.stdout + proc.stderr
    assert found == "[]", f"the runtime image contains {found}"
    assert compilers == "[]", f"the runtime image contains compilers {compilers}"
    assert int(uid) == UID, why
    assert "CPUExecutionProvider" in providers, why
    proc = inside(container, "python", "-c", "import tensorflow")
    assert proc.returncode != 0, "tensorflow imports in the serving image"
    assert "No module named 'tensorflow'" in proc.stderr, proc.stdout + proc.stderr
    proc = inside(container, "sh", "-c", "ls -A /root/.cache /opt/venv/bin 2>/dev/null | grep pip")
    assert proc.returncode == 1, f"pip or its cache is in the image: {proc.stdout}"


def test_openvino_plugin_registers_with_onnxruntime(container):
    """The CPU image carries the OpenVINO EP plugin and this onnxruntime loads it (the devices
    it offers depend on the machine: none on a non-Intel CPU with plugin 1.8.x)."""
    probe = (
        "import onnxruntime as ort, onnxruntime_ep_openvino as p\n"
        "ort.register_execution_provider_library(p.get_ep_name(), p.get_library_path())\n"
        "print(p.get_ep_name(), [str(d.device.type) for d in ort.get_ep_devices()"
        " if d.ep_name == p.get_ep_name()])\n"
    )
    proc = inside(container, "python", "-c", probe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"\nin the image: {proc.stdout.strip()}")
    assert proc.stdout.startswith("OpenVINOExecutionProvider ")


def test_cli_runs_in_the_image(container):
    """The plain `tl2edge` command (not only the entry point) works in an installed wheel."""
    proc = inside(container, "tl2edge", "serve", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--repository" in proc.stdout


# ---- serving ---------------------------------------------------------------------------


def test_serves_the_repository_like_in_process_ort(server, container, repo):
    from tl2edge.client import Client

    # The image's HEALTHCHECK command, run inside the image.
    proc = inside(
        container, "tl2edge-entrypoint", "--healthcheck", env={"TL2EDGE_PORT": str(server.port)}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SERVING" in proc.stdout + proc.stderr

    pixels = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    expected = reference(repo / MODEL / "1", pixels)
    with Client(server.address) as client:
        probs = client.infer(MODEL, pixels)  # KServe v2, raw tensors
        preds = client.classify(list(pixels), top_k=1)  # Classify API
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert [p[0].label for p in preds] == [LABELS[i] for i in expected.argmax(axis=1)]

    assert uid_of(server_pid(server.proc.pid)) == UID, "the server runs as root"
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert re.search(r"^tl2edge_\w+", metrics, re.M), "no tl2edge metrics on the metrics port"


def test_sigterm_drains_and_exits_0(container, repo, tmp_path):
    srv = Server(container, repo, tmp_path / "server.log")
    srv.wait_serving()
    start = time.monotonic()
    code = srv.stop()
    log = srv.log.read_text()
    assert code == 0, f"exit {code} after SIGTERM:\n{log}"
    assert "Traceback" not in log, log
    print(f"\nSIGTERM to exit: {time.monotonic() - start:.1f} s")


# ---- a model baked into the image ------------------------------------------------------

CONTEXT_FILES = ["Dockerfile", ".dockerignore", "pyproject.toml", "README.md"]
CONTEXT_DIRS = ["tl2edge", "serve", "train", "export", "deploy/container"]


def test_bundled_repository_serves_without_a_mount(image, tmp_path):
    """MODEL_REPO=bundle/<repo> copies a repository to /models (a copy of the context, so
    the checkout stays untouched; unchanged layers come from the cache)."""
    import shutil

    from tl2edge.client import Client

    context = tmp_path / "context"
    for name in CONTEXT_FILES:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.onnx", "*.npz", "*.egg-info")
    for name in CONTEXT_DIRS:
        shutil.copytree(ROOT / name, context / name, ignore=ignore)
    version = write_version(context / "bundle" / "repo", MODEL, 1)
    for p in (context / "bundle").rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)

    tag = TAG + "-bundle"
    env = {**os.environ, "CONTEXT": str(context), "MODEL_REPO": "bundle/repo"}
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-image.sh"), "-t", tag],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    name = run(["buildah", "from", "--pull-never", tag]).stdout.strip()
    try:
        srv = Server(name, None, tmp_path / "server.log")
        try:
            srv.wait_serving()
            pixels = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
            with Client(srv.address) as client:
                probs = client.infer(MODEL, pixels)
            np.testing.assert_allclose(probs, reference(version, pixels), rtol=1e-5, atol=1e-6)
        finally:
            assert srv.stop() == 0, srv.log.read_text()
    finally:
        run(["buildah", "rm", name], check=False)


# ---- bad start-ups: non-zero exit and one line that says why ----------------------------


def _corrupt_bytes(repo: Path) -> None:
    """Garbage model bytes with a matching sha256: only loading it can tell."""
    version = write_version(repo, MODEL, 1)
    (version / mf.MODEL_FILE).write_bytes(b"not an onnx model" * 64)
    manifest = json.loads((version / mf.MANIFEST).read_text())
    manifest["sha256"] = mf.sha256_file(version / mf.MODEL_FILE)
    (version / mf.MANIFEST).write_text(json.dumps(manifest))


BAD_STARTS = {
    # case: (prepare the repository mounted at /models, extra args, words in the reason)
    "empty-models": (lambda repo: None, [], ["model"]),
    "missing-models": (lambda repo: None, ["--repository", "/no/such/models"], ["/no/such/models"]),
    "sha256-mismatch": (lambda repo: write_version(repo, MODEL, 1, corrupt=True), [], ["sha256"]),
    "corrupt-onnx": (_corrupt_bytes, [], [MODEL]),
    "cuda-on-cpu": (lambda repo: write_version(repo, MODEL, 1), ["--device", "cuda"], ["cuda"]),
}


@pytest.mark.parametrize("case", list(BAD_STARTS))
def test_bad_start_exits_nonzero_with_a_reason(case, container, tmp_path):
    prepare, args, words = BAD_STARTS[case]
    repo = tmp_path / "repo"
    repo.mkdir(mode=0o755)
    prepare(repo)
    for p in repo.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    env = {
        "TL2EDGE_HOST": "127.0.0.1",
        "TL2EDGE_PORT": str(free_port()),
        "TL2EDGE_METRICS_PORT": "-1",
    }
    cmd = buildah_run(container, "tl2edge-entrypoint", *args, env=env, volumes={repo: "/models"})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{case}: exit 0\n{output}"
    reasons = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(reasons) == 1, f"{case}: expected one 'error: ...' line\n{output}"
    assert all(w.lower() in reasons[0].lower() for w in words), f"{case}: {reasons[0]}"
    assert "Traceback" not in output, f"{case}: a traceback instead of a reason\n{output}"
