"""Model control, as Triton names its modes (`--model-control-mode`):

- `none`: the models loaded at start-up are served until the server stops;
- `poll`: the repository is polled every `--reload-interval-s` for new, replaced and
  removed versions (hot reload);
- `explicit`: only RepositoryModelLoad / RepositoryModelUnload change what is served;
  start-up loads the `--load-model` names, or every model when none is named.

RepositoryIndex answers in every mode. Load and unload run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

from tl2edge.errors import UserError
from tl2edge.serve.config import MODES
from tl2edge.serve.errors import ModelNotFound, NotAllowed
from tl2edge.serve.repository import ModelRepository

log = logging.getLogger("tl2edge.serve.modelcontrol")

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
# Parameters of Triton's load request that would change the model's files or config.
UNSUPPORTED_LOAD_PARAMETERS = ("config",)


class IndexEntry(NamedTuple):
    name: str
    version: str  # "" for a model not loaded
    state: str
    reason: str


class ModelControl:
    def __init__(
        self,
        repository: ModelRepository,
        mode: str = "none",
        *,
        on_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if mode not in MODES:
            raise UserError(f"model control mode {mode!r}: use one of {', '.join(MODES)}")
        self.repository = repository
        self.mode = mode
        self.on_change = on_change
        self._lock = asyncio.Lock()
        self._reasons: dict[str, str] = {}  # why a model is not loaded

    def select_startup_models(self, names: Sequence[str]) -> None:
        """Explicit mode: serve only `names` from start-up (all when empty)."""
        if not names:
            return
        if self.mode != "explicit":
            raise UserError("--load-model needs --model-control-mode explicit")
        available = {n for n, _ in self.repository.scan_source()}
        missing = sorted(set(names) - available)
        if missing:
            raise UserError(
                f"--load-model {', '.join(missing)}: not in {self.repository.source}; "
                f"models there: {', '.join(sorted(available)) or 'none'}"
            )
        self.repository.enabled = set(names)

    def index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        """Every model in the repository: loaded versions READY, the others UNAVAILABLE."""
        entries: list[IndexEntry] = []
        try:
            names = {n for n, _ in self.repository.scan_source()}
        except UserError as exc:  # the source became unreadable: report what is served
            log.warning("model source unreadable for the index", extra={"error": str(exc)})
            names = set()
        for name in sorted(names | set(self.repository.models)):
            versions = self.repository.models.get(name, {})
            for version in versions:
                entries.append(IndexEntry(name, str(version), READY, ""))
            if not versions and not ready_only:
                reason = self._reasons.get(name, "unloaded")
                entries.append(IndexEntry(name, "", UNAVAILABLE, reason))
        return entries

    async def load(self, name: str, parameters: Sequence[str] = ()) -> None:
        self._require_explicit("load")
        unsupported = [p for p in parameters if p in UNSUPPORTED_LOAD_PARAMETERS or ":" in p]
        if unsupported:
            raise NotAllowed(
                f"load parameters {', '.join(sorted(unsupported))} are not supported: models "
                f"load from the repository's files as exported (tl2edge export)"
            )
        async with self._lock:
            try:
                await self.repository.load_model(name)
            except ModelNotFound:
                raise
            except Exception as exc:
                self._reasons[name] = f"failed to load: {exc}"
                log.error("model failed to load", extra={"model": name, "error": str(exc)})
                raise NotAllowed(
                    f"model {name!r} failed to load: {exc}; the versions served before (if "
                    f"any) still serve"
                ) from None
            self._reasons.pop(name, None)
            await self._changed()

    async def unload(self, name: str) -> None:
        self._require_explicit("unload")
        async with self._lock:
            known = name in self.repository.models or any(
                n == name for n, _ in self.repository.scan_source()
            )
            if not known:
                raise ModelNotFound(f"no model {name!r} in {self.repository.source}")
            self.repository.unload_model(name)
            self._reasons.pop(name, None)
            await self._changed()

    def _require_explicit(self, what: str) -> None:
        if self.mode != "explicit":
            raise NotAllowed(
                f"model {what} requests need a server started with --model-control-mode "
                f"explicit; this one runs with {self.mode}"
            )

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()
