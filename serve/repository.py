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
from tl2edge.serve.aliases import Alias, resolve_aliases
from tl2edge.serve.batching import Batcher
from tl2edge.serve.config import BatchConfig, VersionPolicy
from tl2edge.serve.errors import ModelNotFound
from tl2edge.serve.limits import shown
from tl2edge.serve.metrics import ModelStats
from tl2edge.serve.priority import normal_priority_executor
from tl2edge.serve.providers import DeviceUnavailable, gate_failures
from tl2edge.serve.runtime import RuntimeConfig, Selection, create_session, warm_up

LOAD_THREADS = 2  # model versions loaded at once

log = logging.getLogger("tl2edge.serve.repository")

NUMPY_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


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
    selection: Selection | None = None  # the device and, for `auto`, what was measured
    # Batch-1 latency measured on this session at load (the `--device auto` probe of the
    # chosen provider); ranks the variants behind a plain export name (serve.aliases).
    measured_latency_ms: float | None = None

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

    @property
    def provider(self) -> str:
        """The provider the session runs on (the first it got; CPU is only the fallback)."""
        return self.providers[0]

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


def load_version(path: Path, runtime: RuntimeConfig) -> tuple:
    """(manifest, session, input dtype, fingerprint, selection) for a version folder or an
    .onnx file."""
    fingerprint = _fingerprint(path)
    if path.is_dir():
        manifest = mf.read_manifest(path)
        failed = gate_failures(manifest.providers)
        selection = create_session(path / manifest.model_file, runtime, failed=failed)
        session = selection.session
    else:
        selection = create_session(path, runtime)
        session = selection.session
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
    return manifest, session, dtype, fingerprint, selection


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
        self.aliases: dict[str, Alias] = {}  # plain export name -> variant model (serve.aliases)
        self.observers: list[Callable[[LoadedModel, int, list[float], float], None]] = []
        self._failed: dict[Path, tuple[int, ...]] = {}
        self.enabled: set[str] | None = None  # model control: only these names (None: all)
        # (name, version) -> why it is not served; start-up and reload skip such versions
        self.skipped: dict[tuple[str, int], str] = {}
        if not self.source.exists():
            raise UserError(f"model source {self.source} does not exist")
        self._loader = normal_priority_executor(LOAD_THREADS, "load")

    # -- what the source holds -------------------------------------------------------------
    def scan(self) -> dict[tuple[str, int], Path]:
        """(name, version) -> version folder or file, after the version policy."""
        found = self.scan_source()
        if self.enabled is None:
            return found
        return {key: path for key, path in found.items() if key[0] in self.enabled}

    def scan_source(self) -> dict[tuple[str, int], Path]:
        """Like `scan`, but every model in the source, enabled or not."""
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
        """First load: the selected versions that load, as `refresh` would serve them.

        A version that fails to load is skipped (logged, and kept in `skipped`), so with
        the `latest` policy the newest version that loads is served, as reload does; an
        error only if some model has no loadable version at all.
        """
        wanted = self.scan()
        if not wanted:
            raise UserError(
                f"no model versions in {self.source} (policy {self.policy}); expected "
                f"{self.source}/<model-name>/<version>/{mf.MODEL_FILE} with {mf.MANIFEST}"
            )
        names = sorted({name for name, _ in wanted})
        while todo := {
            key: path
            for key, path in self.scan().items()
            if key[1] not in self.models.get(key[0], {}) and not self._known_bad(path)
        }:
            for (name, version), path in sorted(todo.items()):
                try:
                    model = await self._load(name, version, path)
                except DeviceUnavailable:
                    raise  # the device, not this version: no other version would do better
                except Exception as exc:
                    self._skip(name, version, path, exc)
                    continue
                self._add(model)
        missing = [name for name in names if name not in self.models]
        if missing:
            reasons = "; ".join(
                f"{n} v{v}: {why}" for (n, v), why in sorted(self.skipped.items()) if n in missing
            )
            raise UserError(f"no loadable version of model(s) {', '.join(missing)} ({reasons})")
        self.update_aliases()

    def _skip(self, name: str, version: int, path: Path, exc: Exception) -> None:
        """Remember a version that failed to load (until its files change) and say so."""
        try:
            self._failed[path] = _fingerprint(path)
        except OSError:
            self._failed[path] = ()
        self.skipped[(name, version)] = str(exc)
        log.error(
            "model version failed to load; skipped",
            extra={"model": name, "version": version, "error": str(exc)},
        )

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
                self._skip(name, version, path, exc)
                continue
            self._failed.pop(path, None)
            self.skipped.pop((name, version), None)
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
            self.update_aliases()
        return changes

    async def _load(self, name: str, version: int, path: Path) -> LoadedModel:
        # On a thread at the process's priority: ONNX Runtime's threads inherit it.
        (
            manifest,
            session,
            dtype,
            fingerprint,
            selection,
        ) = await asyncio.get_running_loop().run_in_executor(
            self._loader, load_version, path, self.runtime
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

        h, w = manifest.image_size
        batcher = Batcher(
            run,
            self.batching,
            name=f"{name}-v{version}",
            observer=observe,
            item_shape=(h, w, 3),
            dtype=dtype,
        )
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
            selection=selection,
            measured_latency_ms=next(
                (p.batch1_ms for p in selection.probes if p.device == selection.device), None
            ),
        )
        holder.append(model)
        log.info(
            "model loaded",
            extra={
                "model": name,
                "version": version,
                "variant": manifest.variant,
                "providers": ",".join(model.providers),
                "device": selection.device,
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

    # -- explicit model control -----------------------------------------------------------
    async def load_model(self, name: str) -> list[LoadedModel]:
        """Load (or reload) the selected versions of one model; raises if one fails to load.

        The versions already served keep serving until all new ones are loaded, and also
        if loading fails.
        """
        wanted = {v: p for (n, v), p in self.scan_source().items() if n == name}
        if not wanted:
            raise ModelNotFound(f"no model {name!r} in {self.source}")
        loaded: list[LoadedModel] = []
        try:
            for version, path in sorted(wanted.items()):
                loaded.append(await self._load(name, version, path))
        except BaseException:
            await asyncio.gather(*(m.batcher.close() for m in loaded), return_exceptions=True)
            raise
        if self.enabled is not None:
            self.enabled.add(name)
        old = self.models.get(name, {})
        self.models[name] = {m.version: m for m in loaded}
        for model in old.values():
            asyncio.get_running_loop().create_task(self._retire(model))
        self.update_aliases()
        log.info("model loaded on request", extra={"model": name, "versions": sorted(wanted)})
        return loaded

    def unload_model(self, name: str) -> None:
        """Stop serving a model; requests already queued on it finish first."""
        if self.enabled is not None:
            self.enabled.discard(name)
        for model in self.models.pop(name, {}).values():
            asyncio.get_running_loop().create_task(self._retire(model))
        self.update_aliases()
        log.info("model unloaded on request", extra={"model": name})

    def update_aliases(self) -> None:
        """Re-rank the variants behind each plain export name (after any load or unload)."""
        old = {a.name: a.target for a in self.aliases.values()}
        self.aliases = resolve_aliases(self.models)
        for alias in self.aliases.values():
            if old.get(alias.name, "") != alias.target:
                log.info(
                    "plain model name resolved",
                    extra={
                        "model": alias.name,
                        "resolves_to": alias.target,
                        "reason": alias.reason,
                    },
                )

    # -- lookup -------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """The model name that serves `name`: itself, or the variant a plain export name
        resolves to (ModelNotFound, with each variant's reason, when none qualifies)."""
        alias = self.aliases.get(name)
        if name in self.models or alias is None:
            return name
        if alias.target is None:
            raise ModelNotFound(
                f"model {name!r} has no variant to serve: {alias.reason}; ask for a variant by "
                f"its full name, or re-export with a passing variant"
            )
        return alias.target

    def get(self, name: str, version: str | int = "") -> LoadedModel:
        name = self.resolve(name)
        versions = self.models.get(name)
        if not versions:
            known = ", ".join(sorted([*self.models, *self.aliases])) or "none"
            raise ModelNotFound(f"model {shown(name)} is not served here; models: {known}")
        if version in ("", None, 0):
            return versions[max(versions)]
        try:
            v = int(version)
        except ValueError:
            raise ModelNotFound(f"model version {shown(str(version))} is not a number") from None
        if v not in versions:
            raise ModelNotFound(
                f"model {shown(name)} has no version {v} loaded; loaded: {', '.join(map(str, versions))}"
            )
        return versions[v]

    def served_names(self) -> set[str]:
        """Every name a request may use: the models and the plain names that resolve."""
        return {*self.models, *(a.name for a in self.aliases.values() if a.target)}

    def all(self) -> list[LoadedModel]:
        return [m for versions in self.models.values() for m in versions.values()]

    async def close(self) -> None:
        await asyncio.gather(*(m.batcher.close() for m in self.all()), return_exceptions=True)
        self._loader.shutdown(wait=False)
