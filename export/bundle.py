"""One variant's bundle: model.onnx with its metadata_props, and manifest.json.

The manifest is built first with an empty sha256, embedded in the model's metadata, and
then written with the hash of the final file (the metadata is part of what is hashed).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tl2edge import __version__
from tl2edge.export import bench, gates, repository
from tl2edge.export import onnx as onnx_step
from tl2edge.export.config import ExportConfig
from tl2edge.manifest import MANIFEST, MODEL_FILE, Manifest, TensorSpec, sha256_file


def _tools() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tf2onnx

    return {
        "tl2edge": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tf2onnx": tf2onnx.__version__,
    }


def write_bundle(
    bundle: Path,
    model_file: Path,
    *,
    cfg: ExportConfig,
    run: Any,
    variant: str,
    version: int,
    quality: gates.Quality,
    timings: list[bench.Timing],
    quantization: dict[str, Any] | None,
    created: str,
    providers: dict[str, dict[str, Any]] | None = None,
) -> Manifest:
    """model.onnx (with metadata_props) + manifest.json in `bundle`."""
    size = run.image_size
    manifest = Manifest(
        name=repository.model_name(cfg.name, variant),
        version=version,
        variant=variant,
        labels=list(run.labels),
        input=TensorSpec(onnx_step.INPUT_NAME, "UINT8", [-1, size, size, 3]),
        output=TensorSpec(onnx_step.OUTPUT_NAME, "FP32", [-1, len(run.labels)]),
        sha256="",
        quantization=quantization,
        providers=dict(providers or {}),
        metrics={
            **quality.to_dict(),
            "reference": "keras" if variant == "fp32" else "fp32",
            "opset": cfg.opset,
            "latency_cpu": [t.to_dict() for t in timings],
            # Only variants that pass are written; serving reads this via Manifest.passed_gate.
            "accuracy_gate": {
                "passed": True,
                "provider": "CPUExecutionProvider",
                **(
                    {"max_abs_diff_vs_keras": cfg.max_abs_diff}
                    if variant == "fp32"
                    else {"max_accuracy_drop": cfg.max_accuracy_drop}
                ),
            },
        },
        source={
            "run_dir": str(run.path.resolve()),
            "model_sha256": sha256_file(run.model_path),
            "export": cfg.to_json(),
        },
        tools=_tools(),
        created=created,
    )
    target = bundle / MODEL_FILE
    shutil.copy2(model_file, target)
    onnx_step.set_metadata(target, onnx_step.metadata_for(manifest.to_dict()))
    manifest = Manifest.from_dict({**manifest.to_dict(), "sha256": sha256_file(target)})
    (bundle / MANIFEST).write_text(manifest.to_json())
    return manifest
