"""The model bundle contract between export and serve.

A model repository is shaped like Triton's:

    REPO/<model-name>/<version>/model.onnx
    REPO/<model-name>/<version>/manifest.json

Each exported variant (fp32, int8, fp16) is its own model name, `<name>-<variant>`, so a
client picks the variant by name and versions keep their usual meaning (a newer model).
The manifest says what the model expects and returns and how it was made; the same facts
are in the ONNX file's metadata_props (key `tl2edge.manifest`), so a lone .onnx file is
self-describing too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tl2edge.errors import NotFound, UserError

FORMAT = "tl2edge.model/1"
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
METADATA_KEY = "tl2edge.manifest"
VARIANTS = ("fp32", "int8", "fp16")
# The tensor contract, the same in Keras and ONNX: raw RGB pixels in, probabilities out.
INPUT_NAME = "image"
OUTPUT_NAME = "probs"
PREPROCESSING = "vgg16-caffe"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 datatype name: UINT8, FP32, ...
    shape: list[int]  # -1 = dynamic (the batch)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(
            name=str(d["name"]), datatype=str(d["datatype"]), shape=[int(s) for s in d["shape"]]
        )


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    variant: str
    labels: list[str]
    input: TensorSpec
    output: TensorSpec
    sha256: str
    preprocessing: str = f"{PREPROCESSING}, inside the graph: send raw RGB pixels 0..255, NHWC"
    model_file: str = MODEL_FILE
    quantization: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    # Per execution provider (e.g. "OpenVINOExecutionProvider"): accuracy, agreement with
    # the reference, latency and whether the accuracy gate passed there ("passed"). Absent
    # in manifests written before it existed; `auto` never picks a provider with passed=False.
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format: str = FORMAT

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the image input."""
        return int(self.input.shape[1]), int(self.input.shape[2])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        try:
            if d.get("format") != FORMAT:
                raise ValueError(f"format is {d.get('format')!r}, expected {FORMAT!r}")
            m = cls(
                name=str(d["name"]),
                version=int(d["version"]),
                variant=str(d["variant"]),
                labels=[str(x) for x in d["labels"]],
                input=TensorSpec.from_dict(d["input"]),
                output=TensorSpec.from_dict(d["output"]),
                sha256=str(d["sha256"]),
                preprocessing=str(d.get("preprocessing", "")),
                model_file=str(d.get("model_file", MODEL_FILE)),
                quantization=d.get("quantization"),
                metrics=dict(d.get("metrics", {})),
                providers={str(k): dict(v) for k, v in dict(d.get("providers", {})).items()},
                source=dict(d.get("source", {})),
                tools=dict(d.get("tools", {})),
                created=str(d.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid manifest: {exc}") from exc
        if len(m.input.shape) != 4 or m.input.shape[3] != 3:
            raise ValueError(f"invalid manifest: input shape {m.input.shape} is not [N, H, W, 3]")
        if len(m.output.shape) != 2 or (m.output.shape[1] not in (-1, len(m.labels))):
            raise ValueError(
                f"invalid manifest: output shape {m.output.shape} does not match {len(m.labels)} labels"
            )
        return m

    def gate_record(self, provider: str | None = None) -> dict[str, Any] | None:
        """The accuracy-gate record that applies on `provider`: `metrics.providers[provider]`
        when the export measured that provider, else `metrics.accuracy_gate` (measured on the
        CPU provider); None for a manifest that records neither (exports before gate
        records only wrote variants that passed)."""
        per_provider = self.metrics.get("providers", {})
        record = per_provider.get(provider) if isinstance(per_provider, dict) and provider else None
        if isinstance(record, dict) and "passed" in record:
            return record
        record = self.metrics.get("accuracy_gate")
        return record if isinstance(record, dict) else None

    def passed_gate(self, provider: str | None = None) -> bool:
        record = self.gate_record(provider)
        return record is None or bool(record.get("passed", True))

    def __str__(self) -> str:
        h, w = self.image_size
        return f"{self.name} v{self.version} ({self.variant}, {len(self.labels)} classes, {h}x{w})"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(version_dir: str | Path, *, verify: bool = True) -> Manifest:
    """Read and check REPO/<name>/<version>/manifest.json (and the model file's sha256)."""
    version_dir = Path(version_dir)
    path = version_dir / MANIFEST
    if not path.is_file():
        raise NotFound(f"{version_dir}: no {MANIFEST}; not a tl2edge model version")
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: {exc}") from exc
    model = version_dir / manifest.model_file
    if not model.is_file():
        raise UserError(f"{version_dir}: manifest names {manifest.model_file}, which is missing")
    if verify and sha256_file(model) != manifest.sha256:
        raise UserError(
            f"{model}: sha256 does not match the manifest; the file is corrupt or was replaced"
        )
    return manifest


def list_versions(model_dir: str | Path) -> list[int]:
    """Numeric version folders of a model, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and int(p.name) > 0
    )


def list_models(repo: str | Path) -> dict[str, list[int]]:
    """{model name: [versions]} for every model folder in the repository that has a version."""
    repo = Path(repo)
    if not repo.is_dir():
        raise NotFound(f"model repository {repo} does not exist")
    found = {
        p.name: list_versions(p)
        for p in sorted(repo.iterdir())
        if p.is_dir() and not p.name.startswith(".")
    }
    return {name: versions for name, versions in found.items() if versions}


def resolve_model(model: str | Path) -> Path:
    """The model file that MODEL names: a .onnx file, a version folder (REPO/NAME/VERSION: its
    manifest's model file) or a model folder (REPO/NAME: its highest version). UserError if none."""
    path = Path(model)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a .onnx file or a repository entry")
    if path.is_file():
        if path.suffix != ".onnx":
            raise UserError(f"{path} is not a .onnx file")
        return path
    if (path / MANIFEST).is_file():
        return path / read_manifest(path, verify=False).model_file
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    versions = list_versions(path)
    if versions:
        version_dir = path / str(versions[-1])
        return version_dir / read_manifest(version_dir, verify=False).model_file
    raise UserError(f"{path} holds no {MODEL_FILE} and no version folders")


def embedded_manifest(model_file: str | Path, metadata: dict[str, str]) -> Manifest | None:
    """The manifest export stores in an ONNX file's metadata_props (pass ONNX Runtime's
    `session.get_modelmeta().custom_metadata_map`), or None; UserError if it is invalid."""
    text = metadata.get(METADATA_KEY)
    if not text:
        return None
    try:
        return Manifest.from_dict(json.loads(text))
    except (ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"{model_file}: embedded manifest is invalid: {exc}") from exc


def manifest_of(model_file: str | Path, metadata: dict[str, str]) -> Manifest | None:
    """The manifest of a model file: manifest.json beside it (a version folder), else the one
    embedded in its metadata, else None. UserError if the one found is invalid."""
    beside = Path(model_file).parent / MANIFEST
    if beside.is_file():
        try:
            return Manifest.from_dict(json.loads(beside.read_text()))
        except (ValueError, json.JSONDecodeError) as exc:
            raise UserError(f"{beside}: {exc}") from exc
    return embedded_manifest(model_file, metadata)
