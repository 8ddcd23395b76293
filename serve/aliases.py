"""One name per export: `mine` answers as the best loaded variant of `mine-fp32`, `mine-int8`, ...

An export `--name mine` writes one model per variant, `<name>-<variant>`. The server also
answers to the plain `<name>`, resolved to the fastest variant that passed its accuracy gate
on the provider it is served with. "Fastest" is measured when the runtime measured every
candidate (a loaded version's `measured_latency_ms`, batch 1, on its session); otherwise
the preference order of the provider decides:

    CPU, OpenVINO:      int8 > fp32 > fp16   (fp16 has no fast CPU kernels)
    CUDA, TensorRT:     fp16 > int8 > fp32   (tensor cores; int8 QDQ is not always fused)
    anything else:      int8 > fp32 > fp16

A variant whose manifest records a failed accuracy gate (`Manifest.passed_gate`: the record
for the provider it is served with, else the export's own gate) is never chosen; when no variant passes, the plain name is NOT_FOUND with each
variant's reason. A real model folder named `mine` wins over the alias. Only the newest
loaded version of each variant model counts, so hot reload re-ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from tl2edge.manifest import VARIANTS, Manifest

CPU_ORDER = ("int8", "fp32", "fp16")
GPU_ORDER = ("fp16", "int8", "fp32")
PREFERENCE: dict[str, tuple[str, ...]] = {
    "CPUExecutionProvider": CPU_ORDER,
    "OpenVINOExecutionProvider": CPU_ORDER,
    "CUDAExecutionProvider": GPU_ORDER,
    "TensorrtExecutionProvider": GPU_ORDER,
}


class Served(Protocol):
    """What a loaded model version offers the ranking (serve.repository.LoadedModel)."""

    manifest: Manifest
    measured_latency_ms: float | None

    @property
    def provider(self) -> str: ...


@dataclass(frozen=True)
class Candidate:
    """One variant model considered for a plain name."""

    model: str  # the variant's model name, `<name>-<variant>`
    version: int
    variant: str
    provider: str
    latency_ms: float | None  # measured by the runtime, batch 1; None when not measured
    passed: bool
    note: str = ""  # why it was excluded

    def __str__(self) -> str:
        lat = "" if self.latency_ms is None else f", {self.latency_ms:.2f} ms"
        state = "passed" if self.passed else f"excluded: {self.note}"
        return f"{self.model} v{self.version} on {self.provider}{lat} ({state})"


@dataclass(frozen=True)
class Alias:
    """A plain export name and the variant model it resolves to (None: no variant passes)."""

    name: str
    target: str | None
    reason: str
    candidates: tuple[Candidate, ...]


def preference(provider: str) -> tuple[str, ...]:
    return PREFERENCE.get(provider, CPU_ORDER)


def rank(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Passing candidates, best first: by measured latency when every one was measured,
    else by the preference order of the provider each is served with."""
    passing = [c for c in candidates if c.passed]

    def order(c: Candidate) -> int:
        prefs = preference(c.provider)
        return prefs.index(c.variant) if c.variant in prefs else len(prefs)

    if passing and all(c.latency_ms is not None for c in passing):
        return sorted(passing, key=lambda c: (c.latency_ms, order(c)))
    return sorted(passing, key=order)


def split_name(model_name: str, manifest: Manifest) -> str | None:
    """The plain export name of a variant model (`mine-int8` of variant int8 -> `mine`)."""
    suffix = f"-{manifest.variant}"
    if manifest.variant in VARIANTS and model_name.endswith(suffix) and model_name != suffix:
        return model_name[: -len(suffix)]
    return None


def candidate(name: str, model: Served) -> Candidate:
    m = model.manifest
    provider = model.provider
    passed = m.passed_gate(provider)
    note = "" if passed else f"failed its accuracy gate ({_gate_text(m.gate_record(provider))})"
    return Candidate(name, m.version, m.variant, provider, model.measured_latency_ms, passed, note)


def _gate_text(record: dict | None) -> str:
    fields = ", ".join(f"{k} {v}" for k, v in (record or {}).items() if k != "passed")
    return fields or "recorded in its manifest"


def resolve_aliases(models: Mapping[str, Mapping[int, Served]]) -> dict[str, Alias]:
    """Plain name -> Alias for every export with a loaded variant model."""
    groups: dict[str, list[Candidate]] = {}
    for name, versions in models.items():
        if not versions:
            continue
        latest = versions[max(versions)]
        base = split_name(name, latest.manifest)
        if base is None or base in models:
            continue  # not a variant model, or a real model already has the plain name
        groups.setdefault(base, []).append(candidate(name, latest))
    aliases = {}
    for base, found in sorted(groups.items()):
        ranked = rank(found)
        if ranked:
            best = ranked[0]
            how = (
                "fastest measured"
                if best.latency_ms is not None
                else f"preferred on {best.provider} ({' > '.join(preference(best.provider))})"
            )
            reason = f"{best.variant}: {how} of {len(ranked)} passing variant(s)"
            aliases[base] = Alias(base, best.model, reason, tuple(found))
        else:
            why = "; ".join(str(c) for c in found)
            aliases[base] = Alias(
                base, None, f"no variant passed its accuracy gate: {why}", tuple(found)
            )
    return aliases


def aliases_of(model_name: str, aliases: Mapping[str, Alias]) -> list[str]:
    """The plain names that currently resolve to `model_name`."""
    return sorted(a.name for a in aliases.values() if a.target == model_name)


def alias_parameters(repository, asked: str, served: str) -> dict[str, str]:
    """ModelConfig parameters saying how a plain name resolved (`asked` -> `served`) and
    which plain names resolve to `served` now."""
    params = {"aliases": ",".join(aliases_of(served, repository.aliases))}
    alias = repository.aliases.get(asked)
    if asked != served and alias is not None:
        params.update(resolved_from=asked, resolution=alias.reason)
    return params
