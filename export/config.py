"""The export configuration: one frozen dataclass, saved as export_config.json in every bundle."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from tl2edge.errors import UserError
from tl2edge.export.onnx import MAX_OPSET, MIN_OPSET
from tl2edge.export.quantize import QUANTIZATION_CHOICES, check_calibration_method
from tl2edge.manifest import VARIANTS

DEFAULT_VARIANTS = ("fp32", "int8")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_ABS_DIFF = 1e-4  # fp32 ONNX vs Keras, on `probs`: a conversion bug, not rounding, above this


@dataclass(frozen=True)
class ExportConfig:
    """Everything that decides what an export produces. Paths are kept as given."""

    run_dir: str
    repository: str
    name: str
    version: int | None = None  # None: one more than the highest version of any variant
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    opset: int = 17
    calibration_dir: str | None = None  # None: the run's training images
    calibration_samples: int = 128
    calibration_method: str = "minmax"
    quantization: str = "auto"  # auto | a preset name of tl2edge.export.quantize.PRESETS
    max_accuracy_drop: float = 1.0  # points (percent), int8 and fp16 vs fp32
    max_abs_diff: float = MAX_ABS_DIFF
    bench_seconds: float = 2.0  # per latency/throughput measurement in the report
    seed: int = 0  # picks the calibration images
    overwrite: bool = False
    allow_changed_data: bool = False  # use the run's saved split even if the data dir changed

    def __post_init__(self) -> None:
        for name in ("run_dir", "repository", "calibration_dir"):  # Paths are kept as strings
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))
        variants = tuple(self.variants)
        object.__setattr__(self, "variants", variants)
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise UserError(
                f"unknown variant(s) {', '.join(map(repr, unknown))} in --variants; "
                f"choose from {', '.join(VARIANTS)}, e.g. --variants fp32,int8"
            )
        if not variants:
            raise UserError(f"--variants is empty; choose from {', '.join(VARIANTS)}")
        if len(set(variants)) != len(variants):
            raise UserError(f"--variants lists a variant twice: {','.join(variants)}")
        if "fp32" not in variants:
            raise UserError(
                "--variants must include fp32: int8 and fp16 are made from it and "
                "measured against it (add fp32, e.g. --variants fp32,int8)"
            )
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise UserError(
                f"--opset {self.opset} is outside the supported range {MIN_OPSET}-{MAX_OPSET} "
                f"(17 is the default and what the tests cover)"
            )
        if not NAME_PATTERN.match(self.name):
            raise UserError(
                f"--name {self.name!r} is not a valid model name; use letters, digits, '_', "
                "'-' and '.', starting with a letter or digit"
            )
        if self.version is not None and self.version < 1:
            raise UserError(f"--version must be a positive integer, got {self.version}")
        if self.calibration_samples < 1:
            raise UserError(
                f"--calibration-samples must be at least 1, got {self.calibration_samples}"
            )
        check_calibration_method(self.calibration_method)
        if self.quantization not in QUANTIZATION_CHOICES:
            raise UserError(
                f"--quantization must be one of {', '.join(QUANTIZATION_CHOICES)}, "
                f"got {self.quantization!r}"
            )
        if not 0 <= self.max_accuracy_drop <= 100:
            raise UserError(
                f"--max-accuracy-drop is in percentage points, 0..100; got {self.max_accuracy_drop}"
            )
        if self.bench_seconds <= 0:
            raise UserError(f"bench_seconds must be positive, got {self.bench_seconds}")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "variants": list(self.variants)}

    def __str__(self) -> str:
        return (
            f"{self.run_dir} -> {self.repository}/{self.name}-{{{','.join(self.variants)}}}, "
            f"opset {self.opset}, quantization {self.quantization} ({self.calibration_method}, "
            f"{self.calibration_samples} images), max accuracy drop {self.max_accuracy_drop} pt"
        )
