"""Quality gates: what is measured on the run's validation images, and when an export fails.

- fp32 ONNX vs Keras: max |probs difference| <= 1e-4, else the conversion is wrong.
- int8 / fp16 vs fp32: accuracy drop (percentage points) <= --max-accuracy-drop; top-1
  agreement with fp32 is measured and reported alongside.
Every failure message carries the measured numbers and what to try next.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tl2edge.errors import UserError


class GateFailed(UserError):
    """A measured quality gate failed; nothing was written."""


@dataclass(frozen=True)
class Quality:
    """How one model does on the validation images, against the reference (fp32 or Keras)."""

    accuracy: float  # fraction, 0..1
    agreement: float  # top-1 agreement with the reference, 0..1
    max_abs_diff: float  # max |probs - reference probs|
    images: int

    def drop_points(self, reference_accuracy: float) -> float:
        return round((reference_accuracy - self.accuracy) * 100.0, 4)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_quality(probs: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> Quality:
    if probs.shape != reference.shape:
        raise RuntimeError(
            f"probs shape {probs.shape} differs from the reference {reference.shape}"
        )
    pred = probs.argmax(axis=1)
    return Quality(
        accuracy=round(float((pred == labels).mean()), 6) if len(labels) else 0.0,
        agreement=round(float((pred == reference.argmax(axis=1)).mean()), 6)
        if len(labels)
        else 1.0,
        max_abs_diff=float(np.max(np.abs(probs.astype(np.float64) - reference)))
        if probs.size
        else 0.0,
        images=len(labels),
    )


def check_parity(quality: Quality, *, limit: float, opset: int) -> None:
    """The fp32 ONNX model must compute what the Keras model computes."""
    if quality.max_abs_diff > limit:
        raise GateFailed(
            f"fp32 ONNX differs from the Keras model: max |probs difference| = "
            f"{quality.max_abs_diff:.3g} > {limit:g} on {quality.images} validation images "
            f"(top-1 agreement {quality.agreement:.2%}). The conversion is wrong, not rounded: "
            f"try another --opset (now {opset}; 13-18 are supported), check that the run's "
            "model.keras has no custom layers other than tl2edge's, and report it with the run dir"
        )


def accuracy_gate_message(
    variant: str,
    quality: Quality,
    *,
    fp32_accuracy: float,
    max_drop: float,
    tried: list[str] | None = None,
) -> str | None:
    """None when `quality` passes the accuracy-drop gate, else the failure message."""
    drop = quality.drop_points(fp32_accuracy)
    if drop <= max_drop:
        return None
    hints = {
        "int8": (
            "more calibration images (--calibration-samples), representative ones "
            "(--calibration-dir), --calibration-method percentile or entropy, "
            "--quantization auto; or ship fp32/fp16 only (--variants fp32,fp16)"
        ),
        "fp16": "ship fp32 only for this model (--variants fp32), or int8 if it passes",
    }
    tried_text = ("; tried: " + "; ".join(tried)) if tried else ""
    return (
        f"{variant} loses {drop:.2f} accuracy points (> --max-accuracy-drop {max_drop:g}): "
        f"{quality.accuracy:.2%} vs fp32 {fp32_accuracy:.2%} on {quality.images} validation "
        f"images, top-1 agreement with fp32 {quality.agreement:.2%}{tried_text}. "
        f"Try {hints.get(variant, 'a larger --max-accuracy-drop')}; or accept the loss with a "
        "larger --max-accuracy-drop"
    )
