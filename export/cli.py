"""`tl2edge export RUN_DIR --repository REPO --name NAME`: a thin layer over `export(...)`."""

from __future__ import annotations

import argparse
import functools

from tl2edge.cli import field_default
from tl2edge.export.config import ExportConfig
from tl2edge.export.quantize import CALIBRATION_METHODS, QUANTIZATION_CHOICES
from tl2edge.manifest import VARIANTS

# Light imports only: `tl2edge export --help` must not load TensorFlow or onnxruntime.
_default = functools.partial(field_default, ExportConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("run_dir", help="a finished training run (the --out folder of `tl2edge train`)")
    p.add_argument(
        "--repository", required=True, help="model repository folder (created if missing)"
    )
    p.add_argument(
        "--name", required=True, help="model name; variants land in NAME-fp32, NAME-int8, ..."
    )
    p.add_argument(
        "--version", type=int, help="version number (default: one more than the highest existing)"
    )
    p.add_argument(
        "--variants",
        default=",".join(_default("variants")),
        help=f"comma-separated, from {','.join(VARIANTS)}; fp32 is required (default %(default)s)",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=_default("opset"),
        help="ONNX opset, 13-18 (default %(default)s)",
    )
    q = p.add_argument_group("int8 quantization (static, QDQ, per-channel weights)")
    q.add_argument(
        "--quantization",
        default=_default("quantization"),
        help=f"recipe: {' | '.join(QUANTIZATION_CHOICES)}; auto tries several and keeps the fastest "
        "that passes the accuracy gate (default %(default)s)",
    )
    q.add_argument(
        "--calibration-dir",
        help="folder of representative images (any layout); default: the run's training images",
    )
    q.add_argument(
        "--calibration-samples",
        type=int,
        default=_default("calibration_samples"),
        help="images to calibrate on (default %(default)s)",
    )
    q.add_argument(
        "--calibration-method",
        default=_default("calibration_method"),
        help=f"{' | '.join(CALIBRATION_METHODS)} (default %(default)s)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=_default("max_accuracy_drop"),
        help="fail when int8/fp16 lose more accuracy points than this vs fp32 (default %(default)s)",
    )
    p.add_argument(
        "--bench-seconds",
        type=float,
        default=_default("bench_seconds"),
        help="time spent per latency/throughput measurement in the report (default %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument(
        "--allow-changed-data",
        action="store_true",
        help="export even if the run's data dir changed since training (its saved split is "
        "used with the files as they are now)",
    )


def parse_variants(text: str) -> tuple[str, ...]:
    """'fp32, int8' -> ('fp32', 'int8'); ExportConfig checks what is listed."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def run(args: argparse.Namespace) -> int:
    from tl2edge.export.api import export

    result = export(
        args.run_dir,
        repository=args.repository,
        name=args.name,
        version=args.version,
        variants=parse_variants(args.variants),
        opset=args.opset,
        calibration_dir=args.calibration_dir,
        calibration_samples=args.calibration_samples,
        calibration_method=args.calibration_method,
        quantization=args.quantization,
        max_accuracy_drop=args.max_accuracy_drop,
        overwrite=args.overwrite,
        bench_seconds=args.bench_seconds,
        allow_changed_data=args.allow_changed_data,
    )
    print(result.table())
    print(f"report: {result.rows[0].path / 'report.md'}")
    print(f"exported in {result.seconds:.1f} s. Next:\n\n  {result.next_command}\n")
    return 0
