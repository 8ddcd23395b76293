"""float16 weights and compute for GPU targets, with the uint8 input and float32 output kept.

Uses the converter that ships with onnxruntime (`onnxruntime.transformers.float16`), so
the export extra needs no extra package. On CPU an fp16 model is slower than fp32 (ORT
casts around most kernels); it is for CUDA/TensorRT, where it halves memory traffic.
"""

from __future__ import annotations

from pathlib import Path

# Kept in float32: the softmax of a float16 network saturates, and the fp32 output contract
# of `probs` is cheaper to honour at the source.
KEEP_FLOAT32_OPS = ("Softmax",)


def convert_fp16(src: str | Path, dst: str | Path) -> None:
    """Write the float16 version of the fp32 model `src` to `dst`."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    half = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *KEEP_FLOAT32_OPS],
    )
    # Blocking an op appends its Cast nodes at the end of the node list; ONNX wants them sorted.
    wrapped = OnnxModel(half)
    wrapped.topological_sort()
    onnx.save(wrapped.model, str(dst))


def make_fp16(
    cfg, stage: Path, fp32_file: Path, calib_x, val_x, val_y, fp32_probs, fp32_quality
) -> tuple[Path, object, None]:
    """The fp16 variant, built and gated like int8 (`select.choose_int8`'s signature):
    (model file, its quality vs fp32, None) or GateFailed. `calib_x` is unused."""
    from tl2edge.export import bench, gates
    from tl2edge.export import onnx as onnx_step

    out = stage / "fp16.onnx"
    convert_fp16(fp32_file, out)
    onnx_step.check(out)
    quality = gates.measure_quality(
        bench.predict(bench.make_session(out), val_x), val_y, fp32_probs
    )
    message = gates.accuracy_gate_message(
        "fp16", quality, fp32_accuracy=fp32_quality.accuracy, max_drop=cfg.max_accuracy_drop
    )
    if message:
        raise gates.GateFailed(message)
    return out, quality, None
