"""int8 static post-training quantization with ONNX Runtime (QDQ, per-channel weights).

Dynamic quantization is deliberately absent: for a CNN it quantizes activations at run time
and is several times slower than fp32 on CPU. A `QuantRecipe` is a small frozen value with
named presets; `quantize_int8` runs `quant_pre_process` first, then calibrates on decoded
images and writes a QDQ model. Calibration ranges are cached per method, so trying several
recipes (`--quantization auto`) calibrates once per method, not once per recipe.

The head stays in float: the final classifier (the Gemm, or MatMul + Add, producing the
logits) and the Softmax are passed to ORT as `nodes_to_exclude`. Quantizing them would serve
probabilities in steps of the output scale (1/255) that do not sum to 1, and would round small
scores to 0, for a saving of one tiny matrix product.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tl2edge.errors import UserError

log = logging.getLogger("tl2edge.export")

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("u8", "s8")
CALIBRATION_BATCH = 8  # images per calibration run: bounds memory (VGG16 at 224: ~110 MB/image)


def check_calibration_method(method: str) -> None:
    """UserError unless `method` is a calibration method (ExportConfig and QuantRecipe)."""
    if method not in CALIBRATION_METHODS:
        raise UserError(
            f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )


@dataclass(frozen=True)
class QuantRecipe:
    """How to quantize: activation type, weight range, calibration method."""

    name: str
    activations: str = "u8"  # u8: asymmetric uint8 (x86 u8s8 kernels) | s8: symmetric int8
    reduce_range: bool = False  # 7-bit weights: avoids u8s8 saturation on CPUs without VNNI
    calibration: str = "minmax"
    percentile: float = 99.999

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATION_TYPES:
            raise UserError(
                f"quantization recipe {self.name!r}: activations must be one of "
                f"{', '.join(ACTIVATION_TYPES)}, got {self.activations!r}"
            )
        check_calibration_method(self.calibration)
        if not 90.0 <= self.percentile <= 100.0:
            raise UserError(
                f"quantization recipe {self.name!r}: percentile must be in [90, 100], "
                f"got {self.percentile}"
            )

    def with_calibration(self, method: str) -> QuantRecipe:
        return dataclasses.replace(self, calibration=method)

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "format": "QDQ",
            "weights": "s8 per-channel",
            "method": "static",
            "float_head": "final classifier and Softmax kept in float",
        }

    def __str__(self) -> str:
        rr = ", reduce_range" if self.reduce_range else ""
        return f"{self.name} (QDQ, {self.activations} activations, s8 per-channel weights{rr}, {self.calibration})"


PRESETS: dict[str, QuantRecipe] = {
    r.name: r
    for r in (
        QuantRecipe("u8s8"),
        QuantRecipe("u8s8-reduce-range", reduce_range=True),
        QuantRecipe("s8s8", activations="s8"),
    )
}
QUANTIZATION_CHOICES = ("auto", *PRESETS)


def recipe_for(name: str, calibration: str) -> QuantRecipe:
    """The named preset with the given calibration method (UserError for an unknown name)."""
    if name not in PRESETS:
        raise UserError(
            f"--quantization must be one of {', '.join(QUANTIZATION_CHOICES)}, got {name!r}"
        )
    return PRESETS[name].with_calibration(calibration)


def auto_candidates(calibration: str) -> list[QuantRecipe]:
    """What `--quantization auto` tries, most promising first: every preset with the chosen
    calibration method, then u8s8 with the other methods (they help when outliers stretch
    the min/max ranges and the gate fails)."""
    first = [p.with_calibration(calibration) for p in PRESETS.values()]
    others = [PRESETS["u8s8"].with_calibration(m) for m in CALIBRATION_METHODS if m != calibration]
    return first + others


class ImageReader:
    """onnxruntime CalibrationDataReader over uint8 images, CALIBRATION_BATCH at a time.

    Implements `set_range`, so ORT's strided calibration (`CalibStridedMinMax`) can collect
    statistics batch by batch instead of holding every intermediate tensor of every image.
    """

    def __init__(self, images: np.ndarray, input_name: str = "image") -> None:
        self.batches = [
            images[i : i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)
        ]
        self.input_name = input_name
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._items = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._items, None)
        return None if batch is None else {self.input_name: batch}

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def preprocess(src: str | Path, dst: str | Path) -> None:
    """ORT's recommended step before static quantization: optimization + shape inference."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


HEAD_OPS = ("Gemm", "MatMul", "Add")  # what computes the logits: Gemm, or MatMul + bias Add


def float_head(model_path: str | Path) -> list[str]:
    """Names of the nodes to keep in float: the Softmax producing a graph output and the
    classifier feeding it (a Gemm, or an Add of a bias to a MatMul). Empty if the graph does
    not end in a Softmax (nothing to protect)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    names: list[str] = []
    for softmax in (n for n in graph.node if n.op_type == "Softmax" and set(n.output) & outputs):
        names.append(softmax.name)
        frontier = [producer.get(softmax.input[0])]
        while frontier:
            node = frontier.pop()
            if node is None or node.op_type not in HEAD_OPS or node.name in names:
                continue
            names.append(node.name)
            if node.op_type == "Add":  # the bias Add of MatMul + Add: include the MatMul
                frontier.extend(
                    p for i in node.input if (p := producer.get(i)) and p.op_type == "MatMul"
                )
    return names


def quantize_int8(
    prepared: str | Path,
    dst: str | Path,
    images: np.ndarray,
    recipe: QuantRecipe,
    *,
    cache_dir: str | Path,
    keep_float: list[str] | None = None,
) -> None:
    """Write the QDQ int8 model of `prepared` (output of `preprocess`) to `dst`.

    `keep_float`: names of nodes to leave unquantized; default `float_head(prepared)`
    (benchmarks pass [] to measure the fully quantized graph)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if len(images) == 0:
        raise UserError("no calibration images; int8 quantization needs at least one")
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[recipe.calibration]
    extra: dict[str, Any] = {
        "CalibStridedMinMax": 1,  # one reader item (a batch) per collection step
        "ActivationSymmetric": recipe.activations == "s8",
        "WeightSymmetric": True,
    }
    if recipe.calibration == "percentile":
        extra["CalibPercentile"] = recipe.percentile
    # Ranges depend on the calibration method (and symmetry), not on the rest of the recipe.
    cache = Path(cache_dir) / f"calibration-{recipe.calibration}-{recipe.activations}.json"
    head = float_head(prepared) if keep_float is None else keep_float
    # ORT prints calibration progress on stdout; keep stdout for the command's own output.
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(prepared),
            str(dst),
            ImageReader(images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=recipe.reduce_range,
            activation_type=QuantType.QUInt8 if recipe.activations == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            calibration_cache_path=str(cache),
            nodes_to_exclude=head,
            extra_options=extra,
            use_external_data_format=False,
        )
    log.debug("quantized with %s (float: %s) -> %s", recipe, ", ".join(head), dst)
