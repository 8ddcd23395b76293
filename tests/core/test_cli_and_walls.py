"""The CLI shell and the dependency walls. Run: .venv/bin/pytest tests/core -q"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

from tl2edge.cli import COMMANDS, main

HEAVY = ("tensorflow", "keras", "tf2onnx")


def _core_and_serve_modules() -> list[str]:
    import tl2edge.serve

    serve = [m.name for m in pkgutil.walk_packages(tl2edge.serve.__path__, "tl2edge.serve.")]
    names = (
        serve
        + ["tl2edge.serve"]
        + [
            m.name
            for m in pkgutil.walk_packages(tl2edge.__path__, "tl2edge.")
            if not m.name.startswith(
                ("tl2edge.train", "tl2edge.export", "tl2edge.demo", "tl2edge.__main__")
            )
        ]
    )
    return sorted(names)


def test_core_and_serve_never_import_tensorflow():
    modules = _core_and_serve_modules()
    assert "tl2edge.cli" in modules and "tl2edge.images" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported: {out.stdout}"


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if c in ("serve", "predict", "health", "data", "bench")]
)
def test_light_commands_help_without_tensorflow(command):
    code = (
        "import sys\nfrom tl2edge.cli import main\n"
        f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY:' + ','.join(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: tl2edge" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:"


@pytest.mark.parametrize("command", [c for c in COMMANDS])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"tl2edge {command}" in capsys.readouterr().out


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    code = main(["data", "synth", str(tmp_path / "x"), "--task", "target", "--per-class", "0"])
    assert code == 2
    assert "error: --per-class must be at least 1" in capsys.readouterr().err


def test_no_source_file_of_core_or_serve_mentions_a_heavy_import():
    """Static half of the wall: not even a lazy import inside a function."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = [
        p
        for p in (root / "tl2edge").rglob("*.py")
        if "_proto" not in p.parts and p.name != "demo.py"
    ]
    files += list((root / "serve").rglob("*.py"))
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path.relative_to(root)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in HEAVY
            ]
    assert not offenders, offenders


def test_cpu_name_is_the_model_line_of_proc_cpuinfo():
    from pathlib import Path

    from tl2edge.host import cpu_name

    name = cpu_name()
    assert name
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        if lines:
            assert name == lines[0].split(":", 1)[1].strip()


def test_flag_defaults_come_from_the_config_dataclasses():
    from tl2edge.cli import build_parser
    from tl2edge.export.config import ExportConfig
    from tl2edge.train.config import TrainConfig

    train = build_parser("train").parse_args(["train", "data", "--out", "run"])
    assert train.epochs_head == TrainConfig.__dataclass_fields__["epochs_head"].default
    export = build_parser("export").parse_args(
        ["export", "run", "--repository", "r", "--name", "m"]
    )
    assert (
        export.calibration_method == ExportConfig.__dataclass_fields__["calibration_method"].default
    )
