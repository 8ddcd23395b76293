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
