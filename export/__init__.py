"""The export stage: a training run -> validated fp32/int8/fp16 ONNX bundles in a model
repository, with a report. Public API: `export(run_dir, ...) -> ExportResult`."""

from tl2edge.export.api import ExportResult, VariantRow, export

__all__ = ["ExportResult", "VariantRow", "export"]
