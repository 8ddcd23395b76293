"""`evaluate(model, data_dir)`: how an exported ONNX model does on a labelled image folder.

The check before shipping a model to devices: accuracy, per-class precision/recall/F1 and
the confusion matrix of an fp32, int8 or fp16 model on the user's own test images, decoded
exactly as the server decodes them. Labels and input size come from the model's manifest
(beside the file, or embedded in its metadata); class folders are matched to labels by name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tl2edge.errors import UserError
from tl2edge.images import BadImage, decode_rgb, scan_image_folder, unreadable_images_error
from tl2edge.manifest import MANIFEST, Manifest, manifest_of, resolve_model
from tl2edge.metrics import classification_metrics, plot_confusion

log = logging.getLogger("tl2edge.export")


@dataclass(frozen=True)
class Evaluation:
    model: Path
    labels: list[str]
    images: int
    skipped: list[tuple[str, str]]
    metrics: dict[str, Any]
    # provider name -> device, accuracy, agreement (top-1, with the reference) and max |diff|
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    def table(self) -> str:
        rows = [f"{'class':<20} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}"]
        for name, m in self.metrics["per_class"].items():
            if m["support"]:
                rows.append(
                    f"{name:<20} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {m['support']:>8}"
                )
        rows.append(f"accuracy {self.accuracy:.2%} on {self.images} images")
        if len(self.providers) > 1 or any("agreement" in r for r in self.providers.values()):
            rows.append(f"{'provider':<28} {'accuracy':>8} {'agreement':>9} {'max|diff|':>10}")
            for name, r in self.providers.items():
                agree = f"{r['agreement']:.2%}" if "agreement" in r else "-"
                diff = f"{r['max_abs_diff']:.2e}" if "max_abs_diff" in r else "-"
                rows.append(f"{name:<28} {r['accuracy']:>8.2%} {agree:>9} {diff:>10}")
            rows.append(f"agreement: top-1 agreement with {self.reference_name()}")
        return "\n".join(rows)

    def reference_name(self) -> str:
        return next(iter(self.providers.values()), {}).get("reference", "the first provider")


def _manifest_of(model_file: Path, session: Any) -> Manifest:
    found = manifest_of(model_file, session.get_modelmeta().custom_metadata_map)
    if found is None:
        raise UserError(
            f"{model_file} carries no tl2edge manifest (no {MANIFEST} beside it, none in its "
            "metadata), so its labels are unknown; evaluate a model exported by `tl2edge export`"
        )
    return found


def evaluate(
    model: str | Path,
    data_dir: str | Path,
    *,
    out: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    skip_bad_images: bool = False,
    reference: str | Path | None = None,
    runtime_options: dict[str, Any] | None = None,
) -> Evaluation:
    """Evaluate MODEL (a .onnx file or repository entry) on DATA_DIR (one folder per class).

    `device="all"` runs it on every available execution provider and reports each one's
    accuracy and top-1 agreement with `reference` (another model, e.g. the fp32 variant, on
    CPU) or, without one, with the first provider's outputs. The headline metrics are the
    first provider's. With `out`, writes evaluation.json and confusion.png there. Raises
    UserError on bad input.
    """
    from tl2edge.export.bench import make_selection, predict
    from tl2edge.serve.providers import auto_candidates

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    model_file = resolve_model(model)
    devices = auto_candidates() if device == "all" else [device]
    selections = [make_selection(model_file, device=d, **(runtime_options or {})) for d in devices]
    session = selections[0].session
    manifest = _manifest_of(model_file, session)
    folder = scan_image_folder(data_dir, what="data dir", min_classes=1)
    unknown = [c for c in folder.classes if c not in manifest.labels]
    if unknown:
        raise UserError(
            f"class folder(s) {', '.join(unknown)} of {data_dir} are not labels of {manifest.name} "
            f"({', '.join(manifest.labels)}); rename or remove them"
        )
    size = manifest.image_size
    pixels, truth, skipped = [], [], []
    for path, label in tqdm(
        folder.files, desc="decoding images", unit="img", leave=False, mininterval=1.0
    ):
        try:
            pixels.append(decode_rgb(path, size))
        except BadImage as exc:
            skipped.append((str(path), str(exc)))
            continue
        truth.append(manifest.labels.index(folder.classes[label]))
    if skipped and not skip_bad_images:
        raise unreadable_images_error(skipped, "Fix or remove them, or pass --skip-bad-images.")
    if not pixels:
        raise UserError(f"{data_dir}: no readable images")
    x = np.stack(pixels)
    if manifest.input.datatype != "UINT8":
        x = x.astype(np.float32)
    per_device = [predict(s.session, x, batch_size=batch_size) for s in selections]
    probs = per_device[0]
    metrics = classification_metrics(np.asarray(truth), probs.argmax(axis=1), manifest.labels)
    ref_name, ref_probs = f"{selections[0].providers[0]} (same model)", probs
    if reference is not None:
        ref_file = resolve_model(reference)
        ref_probs = predict(make_selection(ref_file).session, x, batch_size=batch_size)
        ref_name = f"{ref_file} on CPUExecutionProvider"
    providers = {}
    for sel, p in zip(selections, per_device, strict=True):
        providers[sel.providers[0]] = {
            "device": sel.device,
            "accuracy": float((p.argmax(axis=1) == np.asarray(truth)).mean()),
            "agreement": float((p.argmax(axis=1) == ref_probs.argmax(axis=1)).mean()),
            "max_abs_diff": float(np.abs(p - ref_probs).max()),
            "reference": ref_name,
        }
    result = Evaluation(model_file, list(manifest.labels), len(truth), skipped, metrics, providers)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "model": str(model_file),
            "name": manifest.name,
            "version": manifest.version,
            "variant": manifest.variant,
            "data_dir": str(data_dir),
            "images": len(truth),
            "skipped": [{"path": p, "reason": r} for p, r in skipped],
            "providers": providers,
            **metrics,
        }
        (out / "evaluation.json").write_text(json.dumps(record, indent=2))
        title = f"{manifest.name} v{manifest.version} on {Path(data_dir).name}"
        plot_confusion(
            metrics["confusion_matrix"], list(manifest.labels), out / "confusion.png", title=title
        )
        log.info("wrote %s and %s", out / "evaluation.json", out / "confusion.png")
    return result
