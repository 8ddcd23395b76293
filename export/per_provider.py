"""Quality of each exported variant on each execution provider this machine has.

The accuracy gate applies to what will really run: a variant measured only on the CPU EP
says nothing about OpenVINO's or CUDA's kernels (bf16/fp16 arithmetic, fused int8 ops). So
every variant runs on every available provider (`providers.auto_candidates`: CPU,
OpenVINO, CUDA; TensorRT only when served explicitly), against the same reference as on
CPU (Keras for fp32, fp32 on CPU for int8/fp16), under the same gates. The CPU EP must
pass (export fails otherwise, as before); another provider that fails is recorded with
`passed: false` in the manifest, and `--device auto` never picks it for that variant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tl2edge.export import gates

log = logging.getLogger("tl2edge.export")


def gate_message(
    variant: str, quality: gates.Quality, *, fp32_accuracy: float, cfg: Any
) -> str | None:
    """None when `quality` passes this variant's gate, else why not."""
    if variant == "fp32":
        if quality.max_abs_diff > cfg.max_abs_diff:
            return (
                f"max |probs difference| with Keras {quality.max_abs_diff:.3g} > "
                f"{cfg.max_abs_diff:g}"
            )
        return None
    return gates.accuracy_gate_message(
        variant, quality, fp32_accuracy=fp32_accuracy, max_drop=cfg.max_accuracy_drop
    )


def record(
    variant: str,
    device: str,
    quality: gates.Quality,
    *,
    fp32_accuracy: float,
    cfg: Any,
) -> dict[str, Any]:
    """The manifest record of one variant on one provider."""
    message = gate_message(variant, quality, fp32_accuracy=fp32_accuracy, cfg=cfg)
    out = {**quality.to_dict(), "device": device, "passed": message is None}
    if message:
        out["gate"] = message
    return out


def measure(
    files: Mapping[str, Path],
    quality_cpu: Mapping[str, gates.Quality],
    *,
    x: np.ndarray,
    y: np.ndarray,
    keras_probs: np.ndarray,
    fp32_probs: np.ndarray,
    cfg: Any,
    predict_on: Callable[[Path, str], np.ndarray] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """variant -> provider name -> record, for every available provider.

    CPU figures are the ones already measured (`quality_cpu`); `predict_on(file, device)`
    gives probs on another device (default: a verified session from the shared policy).
    """
    from tl2edge.serve.providers import PROVIDER, auto_candidates

    if predict_on is None:
        from tl2edge.export.bench import make_session, predict

        def predict_on(path: Path, device: str) -> np.ndarray:
            return predict(make_session(path, device=device), x)

    fp32_accuracy = quality_cpu["fp32"].accuracy
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, path in files.items():
        reference = keras_probs if variant == "fp32" else fp32_probs
        out[variant] = {}
        for device in auto_candidates():
            if device == "cpu":
                quality = quality_cpu[variant]
            else:
                quality = gates.measure_quality(predict_on(path, device), y, reference)
            rec = record(variant, device, quality, fp32_accuracy=fp32_accuracy, cfg=cfg)
            out[variant][PROVIDER[device]] = rec
            if not rec["passed"]:
                log.warning(
                    "%s on %s fails its accuracy gate (%s); --device auto will not use it",
                    variant,
                    PROVIDER[device],
                    rec["gate"],
                )
    return out


def table(per_variant: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Markdown: accuracy and agreement of each variant on each provider."""
    rows = [
        f"| {variant} | {provider} | {r['accuracy']:.2%} | {r['agreement']:.2%} | "
        f"{r['max_abs_diff']:.2e} | {'yes' if r['passed'] else 'no: ' + r.get('gate', '')} |"
        for variant, by_provider in per_variant.items()
        for provider, r in by_provider.items()
    ]
    return (
        "\n## Per execution provider\n\nEach variant on each provider available here; "
        "agreement is top-1 agreement with Keras (fp32) or with fp32 on CPU (int8, fp16).\n\n"
        "| variant | provider | accuracy | agreement | max abs diff | passes gate |\n"
        "|---|---|---:|---:|---:|---|\n" + "\n".join(rows) + "\n"
    )
