"""The `tl2edge` command: one subcommand per stage, each a thin layer over the Python API.

Subcommand modules are imported only when their command runs, so `tl2edge serve --help`
never pulls TensorFlow. Each module provides `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import sys
from typing import Any

from tl2edge import __version__
from tl2edge.errors import UserError

# name -> (module, one-line help). Order is the order of `tl2edge --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("tl2edge.datacli", "generate the built-in synthetic image folders"),
    "train": ("tl2edge.train.cli", "fine-tune VGG16 on an image folder (transfer learning)"),
    "backbone": (
        "tl2edge.train.backbone_cli",
        "save a run's VGG16 backbone as a compact weights file",
    ),
    "prune": (
        "tl2edge.train.prune_cli",
        "make a run's VGG16 cheaper by removing whole filters, then fine-tuning",
    ),
    "export": (
        "tl2edge.export.cli",
        "convert a run to validated ONNX (fp32, int8, fp16) in a model repository",
    ),
    "bench": ("tl2edge.export.bench_cli", "measure latency and throughput of an ONNX model"),
    "evaluate": (
        "tl2edge.export.evaluate_cli",
        "accuracy, per-class metrics and confusion matrix of an ONNX model on labelled images",
    ),
    "serve": ("tl2edge.serve.cli", "serve a model repository over gRPC (KServe v2 + Classify API)"),
    "predict": ("tl2edge.client_cli", "classify images with a running server"),
    "health": ("tl2edge.client_cli_health", "exit 0 only if a server reports SERVING"),
    "demo": ("tl2edge.demo", "the whole pipeline on the built-in synthetic data"),
}
# Commands that may load TensorFlow: its C++ start-up lines are filtered unless --log-level DEBUG.
TENSORFLOW_COMMANDS = ("train", "prune", "backbone", "export", "bench", "demo")


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass field `name`: subcommands take their flag defaults from their
    config dataclasses, so each default is written once."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("logging")
    group.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    group.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="json: one object per line"
    )
    return common


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only that subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="tl2edge",
        description="Train, export and serve an image classifier: folder of images -> VGG16 -> ONNX -> gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"tl2edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            parents=[common],
        )
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)

    from tl2edge.logs import quiet_tensorflow, setup_logging

    setup_logging(args.log_level, args.log_format)
    quiet = (
        quiet_tensorflow(args.log_level)
        if args.command in TENSORFLOW_COMMANDS
        else contextlib.nullcontext()
    )
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        with quiet:
            return int(module.run(args) or 0)
    except UserError as exc:
        logging.getLogger("tl2edge").debug("user error", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
