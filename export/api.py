"""`export(run_dir, ...)`: a training run becomes validated ONNX bundles in a model repository.

Steps: check inputs (before any heavy work) -> convert to fp32 ONNX (checked, optimized) ->
parity gate vs Keras -> int8 (static QDQ; `auto` tries recipes) and/or fp16 with the
accuracy gate -> latency and throughput per variant -> bundles + report -> publish. Everything
is built in a staging folder inside REPO and moved into place at the end, all variants or none.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tl2edge.export import bench, gates, repository
from tl2edge.export import onnx as onnx_step
from tl2edge.export.bundle import write_bundle
from tl2edge.export.config import ExportConfig
from tl2edge.host import cpu_name
from tl2edge.manifest import MODEL_FILE

log = logging.getLogger("tl2edge.export")

CONFIG_FILE = "export_config.json"


@dataclass(frozen=True)
class VariantRow:
    variant: str
    model_name: str
    version: int
    path: Path  # the version folder: model.onnx, manifest.json, report.*
    size_bytes: int
    accuracy: float  # on the run's validation images, 0..1
    agreement: float  # top-1 agreement with fp32 (fp32: with Keras), 0..1
    max_abs_diff: float  # max |probs - fp32 probs| (fp32: vs Keras)
    latency_p50_ms: float  # batch 1, CPU execution provider
    latency_p90_ms: float
    throughput_b8: float  # images/s at batch 8
    quantization: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


@dataclass(frozen=True)
class ExportResult:
    repository: Path
    name: str
    version: int
    rows: tuple[VariantRow, ...]
    keras_accuracy: float
    seconds: float

    def row(self, variant: str) -> VariantRow:
        return next(r for r in self.rows if r.variant == variant)

    @property
    def next_command(self) -> str:
        return f"tl2edge serve --repository {self.repository}"

    def table(self) -> str:
        from tl2edge.export.report import variant_table

        return variant_table([r.to_dict() for r in self.rows])


def export(
    run_dir: str | Path, *, repository: str | Path, name: str, **options: Any
) -> ExportResult:
    """Export the run in `run_dir` to REPO/<name>-<variant>/<version>/ for each variant.

    `options` are the other fields of `ExportConfig` (variants, opset, calibration_dir,
    quantization, max_accuracy_drop, overwrite, allow_changed_data, ...), with its defaults.
    Raises UserError (nothing written) for bad input or a failed quality gate.
    """
    return run_export(
        ExportConfig(run_dir=str(run_dir), repository=str(repository), name=name, **options)
    )


def run_export(cfg: ExportConfig) -> ExportResult:
    from tl2edge.export import rundir

    t0 = time.perf_counter()
    run = rundir.open_run(cfg.run_dir)
    repo = Path(cfg.repository)
    version = cfg.version or repository.next_version(repo, cfg.name, cfg.variants)
    repository.check_free(repo, cfg.name, cfg.variants, version, overwrite=cfg.overwrite)
    calibration = None
    if "int8" in cfg.variants and cfg.calibration_dir:
        calibration = rundir.load_calibration_dir(cfg.calibration_dir, image_size=run.image_size)
    log.info("export %s as version %d", cfg, version)

    model = rundir.load_keras_model(run)
    train, val = rundir.load_run_images(run, allow_changed_data=cfg.allow_changed_data)
    calib_x = rundir.sample(calibration or train, cfg.calibration_samples, seed=cfg.seed)

    with repository.staging(repo) as stage:
        files = {"fp32": convert(model, stage, opset=cfg.opset)}
        t_convert = time.perf_counter() - t0
        keras_q, keras_probs, fp32_probs, quality = check_fp32(cfg, model, files["fp32"], val)

        quant_info = None
        for variant in (v for v in ("int8", "fp16") if v in cfg.variants):
            files[variant], quality[variant], info = _variant_builder(variant)(
                cfg, stage, files["fp32"], calib_x, val.x, val.y, fp32_probs, quality["fp32"]
            )
            quant_info = info if variant == "int8" else quant_info
        t_variants = time.perf_counter() - t0

        from tl2edge.export import per_provider

        by_provider = per_provider.measure(
            {v: files[v] for v in ("fp32", "int8", "fp16") if v in cfg.variants},
            quality,
            x=val.x,
            y=val.y,
            keras_probs=keras_probs,
            fp32_probs=fp32_probs,
            cfg=cfg,
        )
        sample_x = val.x[:8] if len(val.x) else calib_x[:8]
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        rows, moves = make_bundles(
            cfg, run, stage, files, quality, quant_info, version, sample_x, created, by_provider
        )

        result = ExportResult(
            repository=repo,
            name=cfg.name,
            version=version,
            rows=tuple(rows),
            keras_accuracy=keras_q.accuracy,
            seconds=round(time.perf_counter() - t0, 2),
        )
        payload = _report_payload(cfg, run, result, quality, quant_info, val.x, created)
        payload["providers"] = by_provider
        payload["timings"] = {
            "convert_s": round(t_convert, 2),
            "variants_s": round(t_variants, 2),
            "total_s": result.seconds,
        }
        from tl2edge.export.report import write_report

        report_files = write_report(stage / "report", payload)
        for bundle in moves:
            for f in report_files:
                shutil.copy2(f, bundle / f.name)
            (bundle / CONFIG_FILE).write_text(json.dumps(cfg.to_json(), indent=2))
        repository.publish(moves, overwrite=cfg.overwrite)
    log.info("exported %s v%d in %.1f s", cfg.name, version, result.seconds)
    return result


def convert(model: Any, stage: Path, *, opset: int) -> Path:
    """Keras -> checked, optimized fp32 ONNX in `stage`."""
    import onnx

    converted, fp32 = stage / "converted.onnx", stage / "fp32.onnx"
    onnx.save(onnx_step.convert_keras(model, opset=opset), str(converted))
    onnx_step.check(converted)
    onnx_step.optimize(converted, fp32)
    return fp32


def check_fp32(
    cfg: ExportConfig, model: Any, fp32: Path, val: Any
) -> tuple[gates.Quality, np.ndarray, np.ndarray, dict[str, gates.Quality]]:
    """The parity gate: fp32 ONNX vs Keras on the validation images. Returns (Keras quality,
    Keras probabilities, fp32 probabilities, {"fp32": fp32 quality}) or raises GateFailed."""
    keras_probs = model.predict(val.x.astype(np.float32), batch_size=32, verbose=0)
    keras_q = gates.measure_quality(keras_probs, val.y, keras_probs)
    fp32_probs = bench.predict(bench.make_session(fp32, device="cpu"), val.x)
    quality = {"fp32": gates.measure_quality(fp32_probs, val.y, keras_probs)}
    gates.check_parity(quality["fp32"], limit=cfg.max_abs_diff, opset=cfg.opset)
    log.info(
        "fp32: parity with Keras %.2e, accuracy %.2f%%",
        quality["fp32"].max_abs_diff,
        quality["fp32"].accuracy * 100,
    )
    return keras_q, keras_probs, fp32_probs, quality


def make_bundles(
    cfg: ExportConfig,
    run: Any,
    stage: Path,
    files: dict[str, Path],
    quality: dict[str, gates.Quality],
    quant_info: dict[str, Any] | None,
    version: int,
    sample_x: np.ndarray,
    created: str,
    by_provider: dict[str, Any],
) -> tuple[list[VariantRow], dict[Path, Path]]:
    """Time each variant and write its bundle in `stage`; (rows, {bundle: version folder})."""
    repo = Path(cfg.repository)
    rows, moves = [], {}
    for variant in (v for v in ("fp32", "int8", "fp16") if v in cfg.variants):
        timings = bench.bench_session(
            bench.make_session(files[variant]), sample_x, (1, 8), seconds=cfg.bench_seconds
        )
        bundle = stage / "bundles" / variant
        bundle.mkdir(parents=True)
        manifest = write_bundle(
            bundle,
            files[variant],
            cfg=cfg,
            run=run,
            variant=variant,
            version=version,
            quality=quality[variant],
            timings=timings,
            quantization=(quant_info or {}).get("recipe") if variant == "int8" else None,
            created=created,
            providers=by_provider[variant],
        )
        rows.append(
            VariantRow(
                variant=variant,
                model_name=manifest.name,
                version=version,
                path=repository.version_dir(repo, cfg.name, variant, version),
                size_bytes=(bundle / MODEL_FILE).stat().st_size,
                accuracy=quality[variant].accuracy,
                agreement=quality[variant].agreement,
                max_abs_diff=quality[variant].max_abs_diff,
                latency_p50_ms=timings[0].p50_ms,
                latency_p90_ms=timings[0].p90_ms,
                throughput_b8=timings[1].throughput,
                quantization=(quant_info or {}).get("chosen") if variant == "int8" else None,
            )
        )
        moves[bundle] = rows[-1].path
    return rows, moves


def _variant_builder(variant: str):
    """The function that makes and gates a derived variant from the fp32 model; all share
    one signature: (cfg, stage, fp32 file, calibration images, validation images, labels,
    fp32 probabilities, fp32 quality) -> (file, quality, details or None)."""
    if variant == "int8":
        from tl2edge.export.select import choose_int8

        return choose_int8
    from tl2edge.export.fp16 import make_fp16

    return make_fp16


def _report_payload(
    cfg: ExportConfig,
    run: Any,
    result: ExportResult,
    quality: dict[str, gates.Quality],
    quant_info: dict[str, Any] | None,
    val_x: np.ndarray,
    created: str,
) -> dict[str, Any]:
    import onnxruntime

    return {
        "name": cfg.name,
        "version": result.version,
        "repository": str(result.repository),
        "run_dir": str(run.path),
        "labels": list(run.labels),
        "image_size": run.image_size,
        "created": created,
        "validation_images": len(val_x),
        "config": cfg.to_json(),
        "keras": {
            "accuracy": result.keras_accuracy,
            "max_abs_diff": quality["fp32"].max_abs_diff,
        },
        "variants": [r.to_dict() for r in result.rows],
        "quantization": quant_info,
        "machine": {
            "cpu": cpu_name(),
            "providers": "CPUExecutionProvider",
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "seconds": result.seconds,
        "next_command": result.next_command,
    }
