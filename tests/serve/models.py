"""Tiny ONNX classifiers built with onnx.helper (no TensorFlow) and repositories for them.

The standard model is content-dependent: probs = softmax(mean RGB of the image @ W + b),
so answers can be checked against in-process ONNX Runtime. `work` adds input-dependent
matrix products that make each run slow enough to keep requests in flight.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tl2edge import manifest as mf

LABELS = ["cat", "dog", "bird"]


def build_model(
    size: int = 8, classes: int = 3, *, seed: int = 0, work: int = 0, datatype: str = "UINT8"
) -> bytes:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.03, (3, classes)).astype(np.float32)
    b = (rng.normal(0, 0.1, (classes,)) - 127.5 * w.sum(axis=0)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m4"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["m4", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["logits0"]),
    ]
    last = "logits0"
    if work:
        # Input-dependent (so never constant-folded) 512x512 products, added as 0 * their sum.
        k = rng.normal(0, 0.01, (512, 512)).astype(np.float32)
        inits.append(numpy_helper.from_array(k, "K"))
        inits.append(numpy_helper.from_array(np.zeros((), np.float32), "Z"))
        nodes.append(helper.make_node("ReduceMean", ["x"], ["s"], keepdims=0))
        nodes.append(helper.make_node("Mul", ["K", "s"], ["k0"]))
        prev = "k0"
        for i in range(work):
            nodes.append(helper.make_node("MatMul", [prev, "K"], [f"k{i + 1}"]))
            prev = f"k{i + 1}"
        nodes.append(helper.make_node("ReduceSum", [prev], ["ks"], keepdims=0))
        nodes.append(helper.make_node("Mul", ["ks", "Z"], ["kz"]))
        nodes.append(helper.make_node("Add", [last, "kz"], ["logits1"]))
        last = "logits1"
    nodes.append(helper.make_node("Softmax", [last], ["probs"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info(
                "image",
                getattr(TensorProto, {"FP32": "FLOAT"}.get(datatype, datatype)),
                ["batch", size, size, 3],
            )
        ],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_version(
    repo: Path,
    name: str = "tiny-int8",
    version: int = 1,
    *,
    size: int = 8,
    labels: list[str] | None = None,
    seed: int = 0,
    work: int = 0,
    corrupt: bool = False,
    metrics: dict | None = None,
    datatype: str = "UINT8",
) -> Path:
    """REPO/name/version/{model.onnx, manifest.json}, written atomically (temp + rename)."""
    labels = labels or LABELS
    final = repo / name / str(version)
    tmp = repo / name / f".tmp-{version}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / mf.MODEL_FILE).write_bytes(
        build_model(size, len(labels), seed=seed, work=work, datatype=datatype)
    )
    manifest = mf.Manifest(
        name=name,
        version=version,
        variant=name.rsplit("-", 1)[-1] if "-" in name else "fp32",
        labels=labels,
        input=mf.TensorSpec("image", datatype, [-1, size, size, 3]),
        output=mf.TensorSpec("probs", "FP32", [-1, len(labels)]),
        sha256="0" * 64 if corrupt else mf.sha256_file(tmp / mf.MODEL_FILE),
        metrics=metrics or {},
    )
    (tmp / mf.MANIFEST).write_text(json.dumps(manifest.to_dict()))
    tmp.rename(final)
    return final


def reference(version_dir: Path, pixels: np.ndarray) -> np.ndarray:
    """What in-process ONNX Runtime answers for uint8 pixels [N, H, W, 3]."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(version_dir / mf.MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    return session.run(["probs"], {"image": pixels})[0]
