"""The image's entry point maps TL2EDGE_* variables to `tl2edge serve` flags (no buildah needed).

.venv/bin/pytest tests/container/test_entrypoint.py -q
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ep():
    spec = importlib.util.spec_from_file_location(
        "tl2edge_entrypoint", ROOT / "deploy" / "container" / "entrypoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def parser(ep):
    return ep._subparser("serve")


def test_env_name(ep):
    assert ep.env_name("--max-batch-size") == "TL2EDGE_MAX_BATCH_SIZE"
    assert ep.env_name("--grace-s") == "TL2EDGE_GRACE_S"


def test_every_serve_flag_has_a_variable(ep, parser):
    env = {
        ep.env_name(o): "1"
        for a in parser._actions
        for o in a.option_strings
        if o.startswith("--") and o not in ("--help",)
    }
    env.pop("TL2EDGE_MODEL")  # --model and --repository exclude each other
    flags = ep.flags_from_env(parser, [], env)
    given = {f.split("=")[0] for f in flags if f.startswith("--")}
    expected = {
        o
        for a in parser._actions
        for o in a.option_strings[:1]
        if o.startswith("--") and o not in ("--help", "--model")
    }
    assert expected <= given, f"no variable for {sorted(expected - given)}"


def test_values_parse_and_command_line_wins(ep, parser):
    env = {
        "TL2EDGE_REPOSITORY": "/models",
        "TL2EDGE_PORT": "8500",
        "TL2EDGE_MAX_BATCH_SIZE": "16",
        "TL2EDGE_DEVICE": "cpu",
        "TL2EDGE_GRACE_S": "",  # empty = unset
        "UNRELATED": "x",
    }
    argv = ["--port=9000"]
    flags = ep.flags_from_env(parser, argv, env)
    pairs = dict(zip(flags[::2], flags[1::2], strict=True))
    assert pairs == {"--repository": "/models", "--max-batch-size": "16", "--device": "cpu"}
    args = parser.parse_args([*flags, *argv])
    assert (args.port, args.max_batch_size, args.device, args.grace_s) == (9000, 16, "cpu", 30.0)


def test_model_on_the_command_line_beats_the_image_repository(ep, parser):
    env = {"TL2EDGE_REPOSITORY": "/models", "TL2EDGE_PORT": "8500"}
    flags = ep.flags_from_env(parser, ["--model", "/m/model.onnx"], env)
    assert flags == ["--port", "8500"]


def test_bad_variable_is_reported_by_the_parser(ep, parser, capsys):
    flags = ep.flags_from_env(parser, [], {"TL2EDGE_REPOSITORY": "/m", "TL2EDGE_PORT": "x"})
    with pytest.raises(SystemExit):
        parser.parse_args(flags)
    assert "--port" in capsys.readouterr().err


def test_other_commands_pass_through(ep, monkeypatch):
    seen = []
    monkeypatch.setattr(ep, "main", lambda argv: seen.append(argv) or 0)
    assert ep.run(["predict", "--server", "h:1", "x.jpg"], {"TL2EDGE_PORT": "1"}) == 0
    assert ep.run(["--healthcheck"], {"TL2EDGE_PORT": "8600"}) == 0
    assert ep.run(["--healthcheck"], {"TL2EDGE_PORT": "1", "TL2EDGE_HEALTH_ARGS": "--x y"}) == 0
    assert seen == [
        ["predict", "--server", "h:1", "x.jpg"],
        ["health", "--server", "127.0.0.1:8600"],
        ["health", "--server", "127.0.0.1:1", "--x", "y"],
    ]
