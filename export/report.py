"""The export report: report.json (everything measured), report.md (for people) and
report.png (file size and batch-1 latency per variant), written from one payload dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tl2edge.export import per_provider

FILES = ("report.md", "report.json", "report.png")


def variant_table(rows: list[dict[str, Any]]) -> str:
    """The variant table as markdown (also what the CLI and the demo print)."""
    head = (
        "| variant | model | size MB | accuracy | agreement w/ fp32 | p50 ms (b=1) "
        "| p90 ms (b=1) | img/s (b=8) |\n|---|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['variant']} | {r['model_name']}/{r['version']} | {r['size_bytes'] / 1e6:.1f} "
        f"| {r['accuracy']:.2%} | {r['agreement']:.2%} | {r['latency_p50_ms']:.2f} "
        f"| {r['latency_p90_ms']:.2f} | {r['throughput_b8']:.1f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _quantization_section(q: dict[str, Any] | None) -> str:
    if not q:
        return ""
    rows = "\n".join(
        f"| {c['recipe']} | {c['accuracy']:.2%} | {c['agreement']:.2%} | {c['drop_points']:.2f} "
        f"| {_ms(c['latency_p50_ms'])} | {'yes' if c['passed'] else 'no'} |"
        for c in q["candidates"]
    )
    return (
        f"\n## int8 quantization\n\nMode `{q['mode']}`; kept **{q['chosen']}**: {q['reason']}\n\n"
        "| recipe | accuracy | agreement | drop (pt) | p50 ms (b=1) | passes gate |\n"
        f"|---|---:|---:|---:|---:|---|\n{rows}\n"
    )


def render_markdown(payload: dict[str, Any]) -> str:
    rows = payload["variants"]
    keras = payload["keras"]
    cfg = payload["config"]
    machine = payload["machine"]
    serve = payload["next_command"]
    return (
        f"# Export {payload['name']} v{payload['version']}\n\n"
        f"From run `{payload['run_dir']}` ({len(payload['labels'])} classes, "
        f"{payload['image_size']}x{payload['image_size']}), {payload['created']}.\n"
        f"Quality measured on the run's {payload['validation_images']} validation images; "
        f"latency on {machine['cpu']} ({machine['providers']}, onnxruntime {machine['onnxruntime']}).\n\n"
        + variant_table(rows)
        + f"\nKeras accuracy {keras['accuracy']:.2%}; fp32 ONNX vs Keras max |probs difference| "
        f"{keras['max_abs_diff']:.2e} (gate {cfg['max_abs_diff']:g}). Accuracy-drop gate for "
        f"int8/fp16: {cfg['max_accuracy_drop']:g} point(s).\n"
        + _quantization_section(payload.get("quantization"))
        + (per_provider.table(payload["providers"]) if payload.get("providers") else "")
        + f"\n![size and latency](report.png)\n\nExport took {payload['seconds']:.1f} s. "
        f"Serve it:\n\n    {serve}\n"
    )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"][: len(rows)]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
    series = (
        ("file size (MB)", [r["size_bytes"] / 1e6 for r in rows]),
        ("latency p50, batch 1 (ms)", [r["latency_p50_ms"] for r in rows]),
        ("throughput, batch 8 (img/s)", [r["throughput_b8"] for r in rows]),
    )
    for ax, (title, values) in zip(axes, series, strict=True):
        bars = ax.bar(names, values, color=colours)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(folder: str | Path, payload: dict[str, Any]) -> list[Path]:
    """Write report.json, report.md and report.png into `folder`; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(payload, indent=2, default=str))
    (folder / "report.md").write_text(render_markdown(payload))
    plot(payload["variants"], folder / "report.png")
    return [folder / f for f in FILES]
