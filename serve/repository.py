"""The models being served: loading, version policy, warm-up and hot reload.

Source is a model repository (`REPO/<name>/<version>/model.onnx + manifest.json`), one
model folder, one version folder, or a lone .onnx file (its manifest then comes from the
file's metadata, or is inferred with labels "0".."C-1"). Loading is blocking work (hashing,
session creation, warm-up) and runs on a thread; swapping a new version in is one dict
assignment on the event loop, so requests never see a half-loaded model, and requests
already queued on a retired version finish on it before it is closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tl2edge import manifest as mf
from tl2edge.errors import UserError
from tl2edge.serve.batching import BatchConfig, Batcher
from tl2edge.serve.errors import ModelNotFound
from tl2edge.serve.metrics import ModelStats
from tl2edge.serve.runtime import ProviderCheck, RuntimeConfig, create_session, warm_up

log = logging.getLogger("tl2edge.serve.repository")

NUMPY_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of each model to serve: `latest`, `all`, or specific numbers `1,3`."""

    kind: str = "latest"
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        text = text.strip().lower()
        if text in ("latest", "all"):
            return cls(text)
        try:
            versions = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
        except ValueError:
            versions = ()
        if not versions or min(versions) < 1:
            raise ValueError(
                f"version policy {text!r}: use 'latest', 'all' or version numbers like '1,3'"
            )
        return cls("specific", versions)

    def select(self, available: list[int]) -> list[int]:
        if self.kind == "all":
            return list(available)
        if self.kind == "latest":
            return available[-1:]
        return [v for v in available if v in self.versions]

    def __str__(self) -> str:
        return self.kind if self.kind != "specific" else ",".join(map(str, self.versions))


@dataclass
class LoadedModel:
    """One model version ready for requests."""

    manifest: mf.Manifest
    path: Path
    session: ort.InferenceSession
    input_name: str
    output_name: str
    input_dtype: type
    batcher: Batcher
    fingerprint: tuple[int, ...]
    stats: ModelStats = field(default_factory=ModelStats)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    @property
    def image_size(self) -> tuple[int, int]:
        return self.manifest.image_size

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def __str__(self) -> str:
        return f"{self.manifest} on {','.join(self.providers)}"


def _fingerprint(path: Path) -> tuple[int, ...]:
    """Changes when a version's files are replaced in place (mtime and size of each)."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    out: list[int] = []
    for p in files:
        st = p.stat()
        out += [st.st_mtime_ns, st.st_size]
    return tuple(out)


def _manifest_for_file(path: Path, session: ort.InferenceSession) -> mf.Manifest:
    """A lone .onnx file: the manifest embedded by export, or one inferred from the graph."""
    embedded = mf.embedded_manifest(path, session.get_modelmeta().custom_metadata_map)
    if embedded is not None:
        return embedded
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    if len(inp.shape) != 4 or not all(isinstance(d, int) for d in inp.shape[1:]):
        raise UserError(
            f"{path}: input {inp.name} has shape {inp.shape}; expected [N, H, W, 3] with fixed H, W"
        )
    classes = out.shape[-1]
    if not isinstance(classes, int):
        raise UserError(f"{path}: output {out.name} has no fixed class count ({out.shape})")
    dtype = {"tensor(uint8)": "UINT8", "tensor(float)": "FP32"}.get(inp.type, inp.type)
    return mf.Manifest(
        name=path.stem,
        version=1,
        variant="unknown",
        labels=[str(i) for i in range(classes)],
        input=mf.TensorSpec(inp.name, dtype, [-1, *inp.shape[1:]]),
        output=mf.TensorSpec(out.name, "FP32", [-1, classes]),
        sha256=mf.sha256_file(path),
    )


def load_version(path: Path, runtime: RuntimeConfig, check: ProviderCheck) -> tuple:
    """(manifest, session, input dtype, fingerprint) for a version folder or an .onnx file."""
    fingerprint = _fingerprint(path)
    if path.is_dir():
        manifest = mf.read_manifest(path)
        session = create_session(path / manifest.model_file, runtime, check)
    else:
        session = create_session(path, runtime, check)
        manifest = _manifest_for_file(path, session)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if manifest.input.name not in inputs or manifest.output.name not in outputs:
        raise UserError(
            f"{path}: manifest names input {manifest.input.name!r} and output "
            f"{manifest.output.name!r}, the model has {sorted(inputs)} and {sorted(outputs)}"
        )
    dtype = NUMPY_TYPES.get(inputs[manifest.input.name].type)
    if dtype is None:
        raise UserError(f"{path}: input type {inputs[manifest.input.name].type} is not uint8/float")
    h, w = manifest.image_size
    warm_up(session, manifest.input.name, (1, h, w, 3), dtype)
    return manifest, session, dtype, fingerprint


class ModelRepository:
    """name -> version -> LoadedModel, kept in step with the source on `refresh()`."""

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        runtime: RuntimeConfig | None = None,
        policy: VersionPolicy | None = None,
        batching: BatchConfig | None = None,
    ) -> None:
        self.source = Path(source)
        self.runtime = runtime or RuntimeConfig()
        self.policy = policy or VersionPolicy()
        self.batching = batching or BatchConfig()
        self.models: dict[str, dict[int, LoadedModel]] = {}
        self.observers: list[Callable[[LoadedModel, int, list[float], float], None]] = []
        self._check = ProviderCheck(self.runtime)
        self._failed: dict[Path, tuple[int, ...]] = {}
        if not self.source.exists():
            raise UserError(f"model source {self.source} does not exist")

    # -- what the source holds -------------------------------------------------------------
    def scan(self) -> dict[tuple[str, int], Path]:
        """(name, version) -> version folder or file, after the version policy."""
        src = self.source
        if src.is_file():
            if src.suffix != ".onnx":
                raise UserError(f"--model {src}: expected an .onnx file or a model folder")
            return {(src.stem, 1): src}
        if (src / mf.MANIFEST).is_file():
            m = mf.read_manifest(src, verify=False)
            return {(m.name, m.version): src}
        if mf.list_versions(src):  # one model folder: <name>/<version>/...
            groups = {src.name: mf.list_versions(src)}
            base = src.parent
        else:
            groups = mf.list_models(src)
            base = src
        out: dict[tuple[str, int], Path] = {}
        for name, versions in groups.items():
            # A version that failed to load (and has not changed since) is skipped, so
            # `latest` means the newest version that works.
            usable = [v for v in versions if not self._known_bad(base / name / str(v))]
            out.update({(name, v): base / name / str(v) for v in self.policy.select(usable)})
        return out

    def _known_bad(self, path: Path) -> bool:
        if path not in self._failed:
            return False
        try:
            return self._failed[path] == _fingerprint(path)
        except OSError:
            return False

    # -- loading ------------------------------------------------------------------------------
    async def load_all(self) -> None:
        """First load: every selected version, or an error saying why not."""
        wanted = self.scan()
        if not wanted:
            raise UserError(
                f"no model versions in {self.source} (policy {self.policy}); expected "
                f"{self.source}/<model-name>/<version>/{mf.MODEL_FILE} with {mf.MANIFEST}"
            )
        for (name, version), path in sorted(wanted.items()):
            self._add(await self._load(name, version, path))

    async def refresh(self) -> list[str]:
        """Load new or replaced versions, retire removed ones; returns what changed.

        A version that fails to load is logged (once per state of its files) and the old
        versions keep serving.
        """
        try:
            wanted = self.scan()
        except UserError as exc:
            log.error("model source unreadable, keeping current models", extra={"error": str(exc)})
            return []
        changes: list[str] = []
        for (name, version), path in sorted(wanted.items()):
            current = self.models.get(name, {}).get(version)
            try:
                fingerprint = _fingerprint(path)
            except OSError:
                continue  # disappeared between scan and stat
            if current is not None and current.fingerprint == fingerprint:
                continue
            if self._failed.get(path) == fingerprint:
                continue
            try:
                model = await self._load(name, version, path)
            except Exception as exc:  # a bad new version must not stop serving
                self._failed[path] = fingerprint
                log.error(
                    "model version failed to load; still serving the previous ones",
                    extra={"model": name, "version": version, "error": str(exc)},
                )
                continue
            self._failed.pop(path, None)
            old = self._add(model)
            changes.append(f"{'reloaded' if old else 'loaded'} {name} v{version}")
            if old is not None:
                asyncio.get_running_loop().create_task(self._retire(old))
        for name in list(self.models):
            keep_all = any(n == name for n, _ in wanted) and not any(
                (name, v) in wanted for v in self.models[name]
            )
            if keep_all:
                continue  # its new version failed to load: keep serving the old one
            for version in list(self.models[name]):
                if (name, version) not in wanted:
                    old = self.models[name].pop(version)
                    if not self.models[name]:
                        del self.models[name]
                    changes.append(f"unloaded {name} v{version}")
                    asyncio.get_running_loop().create_task(self._retire(old))
        if changes:
            log.info("model repository changed", extra={"changes": "; ".join(changes)})
        return changes

    async def _load(self, name: str, version: int, path: Path) -> LoadedModel:
        manifest, session, dtype, fingerprint = await asyncio.to_thread(
            load_version, path, self.runtime, self._check
        )
        if (manifest.name, manifest.version) != (name, version) and path.is_dir():
            raise UserError(
                f"{path}: manifest says {manifest.name} v{manifest.version}, the folder says "
                f"{name} v{version}; the folder names are what clients use, fix the manifest"
            )
        stats = ModelStats()
        holder: list[LoadedModel] = []

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run([manifest.output.name], {manifest.input.name: batch})[0]

        def observe(size: int, queue_s: list[float], compute_s: float) -> None:
            stats.batch_done(size, queue_s, compute_s)
            for fn in self.observers:
                fn(holder[0], size, queue_s, compute_s)

        batcher = Batcher(run, self.batching, name=f"{name}-v{version}", observer=observe)
        model = LoadedModel(
            manifest=manifest,
            path=path,
            session=session,
            input_name=manifest.input.name,
            output_name=manifest.output.name,
            input_dtype=dtype,
            batcher=batcher,
            fingerprint=fingerprint,
            stats=stats,
        )
        holder.append(model)
        log.info(
            "model loaded",
            extra={
                "model": name,
                "version": version,
                "variant": manifest.variant,
                "providers": ",".join(model.providers),
                "path": str(path),
            },
        )
        return model

    def _add(self, model: LoadedModel) -> LoadedModel | None:
        versions = dict(self.models.get(model.name, {}))
        old = versions.get(model.version)
        versions[model.version] = model
        self.models[model.name] = dict(sorted(versions.items()))
        return old

    @staticmethod
    async def _retire(model: LoadedModel) -> None:
        await model.batcher.close()
        log.info("model version retired", extra={"model": model.name, "version": model.version})

    # -- lookup -------------------------------------------------------------------------------
    def get(self, name: str, version: str | int = "") -> LoadedModel:
        versions = self.models.get(name)
        if not versions:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here; models: {known}")
        if version in ("", None, 0):
            return versions[max(versions)]
        try:
            v = int(version)
        except ValueError:
            raise ModelNotFound(f"model version {version!r} is not a number") from None
        if v not in versions:
            raise ModelNotFound(
                f"model {name!r} has no version {v} loaded; loaded: {', '.join(map(str, versions))}"
            )
        return versions[v]

    def all(self) -> list[LoadedModel]:
        return [m for versions in self.models.values() for m in versions.values()]

    async def close(self) -> None:
        await asyncio.gather(*(m.batcher.close() for m in self.all()), return_exceptions=True)
