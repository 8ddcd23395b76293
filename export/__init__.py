"""The export stage: a training run -> validated fp32/int8/fp16 ONNX bundles in a model
repository, with a report.

    tl2edge export RUN_DIR --repository REPO --name NAME [--variants fp32,int8,fp16]
    tl2edge bench REPO/NAME-int8 [--device cpu|openvino|cuda|tensorrt|auto] [--keras RUN_DIR]

Each variant is its own model in the repository, all sharing the export's version number:

    REPO/NAME-fp32/3/{model.onnx, manifest.json, report.md, report.json, report.png,
                      export_config.json}
    REPO/NAME-int8/3/...
    REPO/NAME-fp16/3/...

so a client chooses the variant by model name, and versions keep their usual meaning (a
newer model). Python API: `export(run_dir, ...) -> ExportResult` (`tl2edge.export.api`).
"""

from tl2edge.export.api import ExportResult, VariantRow, export

__all__ = ["ExportResult", "VariantRow", "export"]
