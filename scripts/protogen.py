"""Regenerate the gRPC stubs in `tl2edge/_proto` from the sources in `protos/`.

    .venv/bin/python scripts/protogen.py            # what `make protos` runs
    .venv/bin/python scripts/protogen.py --out DIR  # elsewhere

A development tool: it is not part of the installed package.

The .proto files keep their package paths (`inference/grpc_service.proto`, the name
tritonclient's descriptors use too, minus the folder), but the Python modules land flat in
one package and import each other relatively, so `tl2edge._proto` is self-contained and
never shadows a top-level `inference` or `tl2edge` module. Needs grpcio-tools (the `dev`
extra).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = ROOT / "tl2edge" / "_proto"
HEADER = '"""Generated protobuf and gRPC code: written by `make protos`, never edited by hand."""\n'


def proto_files(protos: Path = PROTOS) -> list[Path]:
    return sorted(p.relative_to(protos) for p in protos.rglob("*.proto"))


def generate(out: Path = OUT, protos: Path = PROTOS) -> list[Path]:
    """Write `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` for every proto into `out`."""
    import importlib.util
    import subprocess
    import sys

    spec = importlib.util.find_spec("grpc_tools")  # dev-only dependency
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("grpcio-tools is not installed: pip install -e '.[dev]'")
    sources = proto_files(protos)
    packages = {str(p.parent).replace("/", ".") for p in sources}
    include = Path(spec.submodule_search_locations[0]) / "_proto"
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            f"-I{protos}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *map(str, sources),
        ]
        # protoc runs in its own process: in-process it crashes when another copy of the
        # protobuf C++ runtime (TensorFlow's) is already loaded.
        result = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", *args], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"protoc failed ({result.stderr.strip()}): {' '.join(args)}")
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*_pb2*.py*"):
            old.unlink()
        for path in sorted(Path(tmp).rglob("*_pb2*.py*")):
            target = out / path.name
            if target.exists():
                raise RuntimeError(f"two protos generate {path.name}; rename one")
            target.write_text(_relative_imports(path.read_text(), packages))
            written.append(target)
    init = out / "__init__.py"
    if not init.exists():
        init.write_text(HEADER)
    return written


def _relative_imports(code: str, packages: set[str]) -> str:
    """`from inference import model_config_pb2` -> `from . import model_config_pb2`."""

    def fix(match: re.Match[str]) -> str:
        return f"from . import {match.group(2)}" if match.group(1) in packages else match.group(0)

    return re.sub(r"^from ([\w.]+) import (\w+_pb2\b)", fix, code, flags=re.MULTILINE)


def stale_files(out: Path = OUT) -> list[str]:
    """Generated files that differ from what the protos give now (empty when up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_text() for p in generate(Path(tmp))}
    current = {p.name: p.read_text() for p in out.glob("*_pb2*.py*")}
    names = sorted(set(fresh) | set(current))
    return [n for n in names if fresh.get(n) != current.get(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main()
