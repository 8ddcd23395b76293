"""Choosing the int8 model: one recipe, or `auto` = try a few and keep the fastest that passes.

`auto` first tries every preset with the chosen calibration method (ranges are calibrated
once and shared); if none meets the accuracy gate it tries the other calibration methods,
stopping at the first that passes. Among passing candidates the lowest batch-1 p50 latency
on this machine's CPU wins (within 3%, the earlier recipe: that is noise); the report lists
every candidate with its numbers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tl2edge.export import bench, gates
from tl2edge.export import onnx as onnx_step
from tl2edge.export.config import ExportConfig
from tl2edge.export.quantize import (
    PRESETS,
    QuantRecipe,
    auto_candidates,
    preprocess,
    quantize_int8,
    recipe_for,
)

log = logging.getLogger("tl2edge.export")

TIE = 0.03  # relative latency difference below which two recipes count as equally fast


def choose_int8(
    cfg: ExportConfig,
    stage: Path,
    fp32_file: Path,
    calib_x: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    fp32_probs: np.ndarray,
    fp32_quality: gates.Quality,
) -> tuple[Path, gates.Quality, dict[str, Any]]:
    """(int8 model file, its quality, what was tried and why the winner won) or GateFailed."""
    prepared = stage / "int8-prepared.onnx"
    preprocess(fp32_file, prepared)
    if cfg.quantization == "auto":
        candidates = auto_candidates(cfg.calibration_method)
        first_round = len(PRESETS)
    else:
        candidates = [recipe_for(cfg.quantization, cfg.calibration_method)]
        first_round = 1
    tried: list[dict[str, Any]] = []
    passing: list[tuple[float | None, int, Path, gates.Quality, QuantRecipe]] = []
    sample_x = val_x[:1] if len(val_x) else calib_x[:1]
    for i, recipe in enumerate(candidates):
        if i >= first_round and passing:
            break
        out = stage / f"int8-{i}.onnx"
        quantize_int8(prepared, out, calib_x, recipe, cache_dir=stage)
        onnx_step.check(out)
        session = bench.make_session(out)
        quality = gates.measure_quality(bench.predict(session, val_x), val_y, fp32_probs)
        message = gates.accuracy_gate_message(
            "int8", quality, fp32_accuracy=fp32_quality.accuracy, max_drop=cfg.max_accuracy_drop
        )
        p50 = (
            bench.bench_session(session, sample_x, (1,), seconds=cfg.bench_seconds / 2)[0].p50_ms
            if cfg.quantization == "auto"
            else None  # one recipe: nothing to compare, the report measures it anyway
        )
        tried.append(
            {
                "recipe": str(recipe),
                "accuracy": quality.accuracy,
                "agreement": quality.agreement,
                "drop_points": quality.drop_points(fp32_quality.accuracy),
                "latency_p50_ms": p50,
                "passed": message is None,
            }
        )
        log.info(
            "int8 %s: accuracy %.2f%%, agreement %.2f%%%s%s",
            recipe,
            quality.accuracy * 100,
            quality.agreement * 100,
            "" if p50 is None else f", p50 {p50:.2f} ms",
            "" if message is None else " (fails the gate)",
        )
        if message is None:
            passing.append((p50, i, out, quality, recipe))
    if not passing:
        summary = [
            f"{t['recipe']}: {t['accuracy']:.2%}, drop {t['drop_points']:.2f} pt" for t in tried
        ]
        best = max(tried, key=lambda t: t["accuracy"])
        raise gates.GateFailed(
            gates.accuracy_gate_message(
                "int8",
                gates.Quality(best["accuracy"], best["agreement"], float("nan"), len(val_y)),
                fp32_accuracy=fp32_quality.accuracy,
                max_drop=cfg.max_accuracy_drop,
                tried=summary,
            )
            or "int8 failed the accuracy gate"
        )
    if cfg.quantization == "auto":
        fastest = min(c[0] for c in passing)
        # Within TIE of the fastest, timing noise decides; keep the earlier (default) recipe.
        _, index, out, quality, recipe = next(c for c in passing if c[0] <= fastest * (1 + TIE))
        reason = (
            f"the fastest at batch 1 ({tried[index]['latency_p50_ms']:.2f} ms p50; recipes "
            f"within {TIE:.0%} count as equal and the earlier one wins) of {len(passing)} "
            f"passing recipe(s) out of {len(tried)} tried"
        )
    else:
        _, index, out, quality, recipe = passing[0]
        reason = "the recipe asked for with --quantization; it passes the gate"
    info = {
        "mode": cfg.quantization,
        "chosen": str(recipe),
        "recipe": {**recipe.to_dict(), "calibration_images": len(calib_x)},
        "reason": reason,
        "candidates": tried,
    }
    return out, quality, info
