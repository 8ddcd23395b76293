"""What `tl2edge prune` writes: an ordinary run dir plus the pruning report and lineage.

The run dir has the files `tl2edge train` writes (see tl2edge.rundir; the parent's config
and saved split), so export and serve take it unchanged, plus prune.json (lineage: parent, kept filters per
layer), prune_config.json and prune.png. It is built in a staging folder and moved into place.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from tl2edge import rundir
from tl2edge.fsutil import atomic_dir
from tl2edge.host import cpu_name
from tl2edge.rundir import RunDir
from tl2edge.train.flops import human
from tl2edge.train.prune_fit import CONFIG_FILE, LINEAGE_FILE, PruneConfig, PruneResult

log = logging.getLogger("tl2edge.train")

ROUNDS = 3  # measurements alternate parent / pruned this many times; medians are reported


def write_run(
    cfg: PruneConfig,
    result: PruneResult,
    *,
    run,
    parent,
    model,
    data,
    history: list[dict],
    origin: dict[str, np.ndarray],
    batch_size: int,
) -> PruneResult:
    from tl2edge.train import prune as surgery
    from tl2edge.train.flops import layer_costs
    from tl2edge.train.report import write_reports

    out = Path(cfg.out)
    # An empty folder given as --out is taken; anything else needs --overwrite.
    overwrite = cfg.overwrite or (out.is_dir() and not any(out.iterdir()))
    with atomic_dir(out, overwrite=overwrite) as staging:
        pruned = RunDir(staging)
        model.save(pruned.model_path)
        pruned.write_labels(run.labels)
        rundir.write_json(pruned.file(rundir.CONFIG), run.config)
        split = run.dir.split()
        if split is not None:  # export evaluates the pruned run on the parent's exact split
            pruned.write_split(split)
        rundir.write_json(pruned.file(CONFIG_FILE), cfg.to_json())
        parent_filters = surgery.filter_counts(parent)
        lineage = {
            "parent": str(run.path.resolve()),
            "parent_val_accuracy": result.parent_accuracy,
            "method": cfg.method if cfg.method == "taylor" else f"norm-{cfg.norm}",
            "cost_weight": cfg.cost_weight,
            "channel_multiple": cfg.channel_multiple,
            "target_speedup": cfg.target_speedup,
            "flops": {"parent": result.parent_flops, "pruned": result.flops},
            "speedup": round(result.speedup, 4),
            "stopped": result.stopped,
            "rounds": [dataclasses.asdict(r) for r in result.rounds],
            "layers": {
                name: {
                    "parent_filters": parent_filters[name],
                    "filters": len(idx),
                    "kept": [int(i) for i in idx],
                }
                for name, idx in origin.items()
            },
        }
        rundir.write_json(pruned.file(LINEAGE_FILE), lineage)
        rundir.write_json(pruned.file(rundir.HISTORY), history)
        parent_record = run.dir.record()
        costs = {
            "parent": _cost_summary(layer_costs(parent)),
            "pruned": _cost_summary(layer_costs(model)),
        }
        measured = None
        if cfg.measure:
            measured = measure_onnx(
                parent,
                model,
                data,
                device=cfg.device,
                seconds=cfg.bench_seconds,
                work=staging / "measure",
                image_size=int(run.image_size),
            )
            shutil.rmtree(staging / "measure", ignore_errors=True)
        result = dataclasses.replace(result, measured=measured)
        record = {
            **parent_record,
            "weights": f"pruned from {run.path}",
            "pruning": {k: v for k, v in lineage.items() if k != "layers"}
            | {"costs": costs, "measured": measured},
            "timings": {"prune_s": result.seconds},
        }
        record.setdefault("counts", {"train": len(data.train), "val": len(data.val)})
        record.setdefault("bad_images", [])
        record.setdefault("device", {})
        record.setdefault("seed", run.config.get("seed"))
        record.setdefault("data_fingerprint", data.fingerprint)
        record["config"] = run.config
        record["classes"] = list(data.classes)
        write_reports(pruned, model, data, history, record, batch_size=batch_size)
        plot_prune(lineage, costs, measured, staging / "prune.png")
        training_md = (
            pruned.file(rundir.REPORT)
            .read_text()
            .replace("# Training report", "## Fine-tuned model (training-style report)", 1)
        )
        pruned.write_text(
            rundir.REPORT, prune_markdown(lineage, costs, measured, result) + "\n" + training_md
        )
        pruned.write_state(
            rundir.COMPLETE,
            phases_done=[f"prune-{r.step}" for r in result.rounds],
            timings={"prune_s": result.seconds},
        )
    return result


def _cost_summary(costs) -> dict[str, Any]:
    return {
        "flops": 2 * sum(c.macs for c in costs),
        "params": sum(c.params for c in costs),
        "layers": {c.name: {"macs": c.macs, "params": c.params} for c in costs},
    }


def measure_onnx(
    parent, pruned, data, *, device: str, seconds: float, work: Path, image_size: int
) -> dict:
    """Both models as `tl2edge export` makes them with its defaults (see `export_like`):
    file sizes, validation accuracy, batch-1 latency and batch-8 throughput on `device`,
    alternating parent and pruned ROUNDS times (the machine may be shared) and reporting
    medians. A model whose int8 fails export's gate has no int8 row (export would not ship
    one); the reason is kept under `int8_failed`."""
    made = export_like(
        {"parent": parent, "pruned": pruned},
        data,
        work=work,
        image_size=image_size,
        seconds=seconds,
    )
    out = time_variants(made, device=device, seconds=seconds, rounds=ROUNDS)
    out["ratios"] = ratios(out["variants"], "pruned")
    return out


def ratios(variants: dict, name: str) -> dict[str, dict[str, float]]:
    """Model `name` against "parent" per precision both have in `variants` (as
    `time_variants` measures them): size, batch-1 latency and batch-8 throughput ratios."""
    out = {}
    for prec in ("fp32", "int8"):
        mine, theirs = variants.get(f"{name}-{prec}"), variants.get(f"parent-{prec}")
        if mine and theirs:
            out[prec] = {
                "size": mine["size_bytes"] / theirs["size_bytes"],
                "latency_b1": mine["latency_b1_p50_ms"] / theirs["latency_b1_p50_ms"],
                "throughput_b8": mine["throughput_b8"] / theirs["throughput_b8"],
            }
    return out


def export_like(
    models: dict[str, Any], data, *, work: Path, image_size: int, seconds: float
) -> dict:
    """Each Keras model as `tl2edge export` makes it with its defaults: fp32 through its
    conversion and parity gate, int8 through its recipe choice (`--quantization auto`, its
    calibration sample of the run's training images, its accuracy gate). Returns the ONNX
    files ("NAME-fp32", "NAME-int8"), the int8 recipe chosen per model, the gate failures,
    and the validation and calibration images."""
    from tl2edge.export import gates, rundir
    from tl2edge.export.api import check_fp32, convert
    from tl2edge.export.config import ExportConfig
    from tl2edge.export.select import choose_int8

    work.mkdir(parents=True, exist_ok=True)
    train, val = rundir.run_images(data, image_size=image_size)
    files: dict[str, Path] = {}
    recipes: dict[str, str] = {}
    failed: dict[str, str] = {}
    calib = None
    for name, model in models.items():
        export_cfg = ExportConfig(
            run_dir=str(work / name), repository=str(work), name=name, bench_seconds=seconds
        )
        if calib is None:
            calib = rundir.sample(train, export_cfg.calibration_samples, seed=export_cfg.seed)
        log.info("measuring: the %s model as export makes it (fp32, int8)", name)
        folder = work / name
        folder.mkdir()
        try:
            fp32 = convert(model, folder, opset=export_cfg.opset)
            files[f"{name}-fp32"] = fp32
            _, _, fp32_probs, quality = check_fp32(export_cfg, model, fp32, val)
            int8, _, info = choose_int8(
                export_cfg, folder, fp32, calib, val.x, val.y, fp32_probs, quality["fp32"]
            )
        except gates.GateFailed as exc:
            log.warning("%s model: export's gate fails: %s", name, exc)
            failed[name] = str(exc)
            continue
        files[f"{name}-int8"] = int8
        recipes[name] = info["chosen"]
    return {
        "files": files,
        "int8_recipe": recipes,
        "int8_failed": failed,
        "val": val,
        "calib": calib,
    }


def time_variants(made: dict, *, device: str, seconds: float, rounds: int) -> dict:
    """Size, validation accuracy, batch-1 p50 latency and batch-8 throughput of every file of
    `export_like`, the files alternating `rounds` times (medians), so all see the same load."""
    from tl2edge.export import bench

    files, val = made["files"], made["val"]
    sessions = {k: bench.make_session(p, device=device) for k, p in files.items()}
    out: dict[str, Any] = {
        "device": device,
        "provider": next(iter(sessions.values())).get_providers()[0],
        "cpu": cpu_name(),
        "rounds": rounds,
        "int8_recipe": made["int8_recipe"],
        "int8_failed": made["int8_failed"],
        "variants": {},
    }
    sample = val.x[:8] if len(val.x) else made["calib"][:8]
    times: dict[str, dict[str, list[float]]] = {k: {"p50": [], "b8": []} for k in files}
    log.info("measuring latency and throughput (%d alternating rounds)", rounds)
    for _ in range(rounds):
        for key, session in sessions.items():
            b1, b8 = bench.bench_session(session, sample, (1, 8), seconds=seconds / rounds)
            times[key]["p50"].append(b1.p50_ms)
            times[key]["b8"].append(b8.throughput)
    for key, path in files.items():
        probs = bench.predict(sessions[key], val.x)
        out["variants"][key] = {
            "size_bytes": path.stat().st_size,
            "accuracy": float((probs.argmax(1) == val.y).mean()),
            "latency_b1_p50_ms": statistics.median(times[key]["p50"]),
            "throughput_b8": statistics.median(times[key]["b8"]),
        }
    return out


def prune_markdown(lineage: dict, costs: dict, measured: dict | None, result: PruneResult) -> str:
    p, q = costs["parent"], costs["pruned"]
    cost = f" / FLOPs saved^{lineage['cost_weight']:g}" if lineage["cost_weight"] else ""
    multiple = lineage.get("channel_multiple", 1)
    cost += f", widths in multiples of {multiple}" if multiple > 1 else ""
    lines = [
        "# Pruning report",
        "",
        f"- parent run: `{lineage['parent']}`",
        f"- method: {lineage['method']} importance{cost}, target {lineage['target_speedup']}x FLOPs, "
        f"{len(result.rounds)} step(s) kept, {result.seconds:.0f} s",
        f"- **FLOPs: {human(p['flops'])} -> {human(q['flops'])} ({result.speedup:.2f}x fewer)**; "
        f"params {human(p['params'])} -> {human(q['params'])} ({p['params'] / q['params']:.2f}x fewer)",
        f"- **validation accuracy: {result.parent_accuracy:.2%} -> {result.accuracy:.2%} "
        f"({(result.accuracy - result.parent_accuracy) * 100:+.2f} points)**",
    ]
    if result.stopped:
        lines.append(f"- **stopped before the target**: {result.stopped}")
    lines += ["", "| layer | parent filters | pruned filters | kept |", "|---|---:|---:|---:|"]
    for name, layer in lineage["layers"].items():
        lines.append(
            f"| {name} | {layer['parent_filters']} | {layer['filters']} "
            f"| {layer['filters'] / layer['parent_filters']:.0%} |"
        )
    lines += [
        "",
        "| step | FLOPs ratio | accuracy after cut | after fine-tuning | epoch kept / run | time |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.rounds:
        lines.append(
            f"| {r.step} | {result.parent_flops / r.flops:.2f}x | {r.accuracy_pruned:.2%} "
            f"| {r.accuracy:.2%} | {r.kept_epoch} / {r.epochs} | {r.seconds:.0f} s |"
        )
    if measured:
        lines += [
            "",
            f"ONNX as `tl2edge export` makes it (int8: its recipe choice and gate) on "
            f"{measured['provider']} ({measured['cpu']}), medians of {measured['rounds']} "
            "alternating rounds:",
            "",
            "| model | size | accuracy | latency b1 p50 | throughput b8 |",
            "|---|---:|---:|---:|---:|",
        ]
        for key, m in measured["variants"].items():
            lines.append(
                f"| {key} | {m['size_bytes'] / 2**20:.2f} MiB | {m['accuracy']:.2%} "
                f"| {m['latency_b1_p50_ms']:.2f} ms | {m['throughput_b8']:.0f} img/s |"
            )
        lines.append("")
        for name, recipe in measured["int8_recipe"].items():
            lines.append(f"- {name} int8 recipe: {recipe}")
        for name, reason in measured["int8_failed"].items():
            lines.append(f"- **{name}: export's gate fails, no int8**: {reason}")
        lines += [
            "",
            "| pruned / parent | size | latency b1 | throughput b8 |",
            "|---|---:|---:|---:|",
        ]
        for prec, r in measured["ratios"].items():
            lines.append(
                f"| {prec} | {r['size']:.2f}x | {r['latency_b1']:.2f}x | {r['throughput_b8']:.2f}x |"
            )
    lines += ["", "![pruning](prune.png)", ""]
    return "\n".join(lines)


def plot_prune(lineage: dict, costs: dict, measured: dict | None, path: Path) -> None:
    """Filters per layer (parent vs pruned), cost bars, and accuracy per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(lineage["layers"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, [lineage["layers"][n]["parent_filters"] for n in names], 0.4, label="parent")
    ax.bar(pos + 0.2, [lineage["layers"][n]["filters"] for n in names], 0.4, label="pruned")
    ax.set_xticks(pos, [n.replace("block", "b").replace("_conv", ".") for n in names], rotation=60)
    ax.set_title("filters per conv layer")
    ax.legend()

    ax = axes[1]
    labels = ["FLOPs", "params"]
    values = [
        costs["pruned"]["flops"] / costs["parent"]["flops"],
        costs["pruned"]["params"] / costs["parent"]["params"],
    ]
    if measured and "int8" in measured["ratios"]:
        r = measured["ratios"]["int8"]
        labels += ["int8 size", "int8 latency b1", "int8 throughput b8"]
        values += [r["size"], r["latency_b1"], r["throughput_b8"]]
    ax.bar(labels, values, color="tab:green")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_title("pruned / parent")
    ax.tick_params(axis="x", rotation=30)

    ax = axes[2]
    steps = [0] + [r["step"] for r in lineage["rounds"]]
    parent_acc = lineage["parent_val_accuracy"]
    ax.plot(
        steps,
        [parent_acc] + [r["accuracy_pruned"] for r in lineage["rounds"]],
        "x--",
        label="after cut",
    )
    ax.plot(
        steps,
        [parent_acc] + [r["accuracy"] for r in lineage["rounds"]],
        "o-",
        label="after fine-tuning",
    )
    ax.set_xlabel("step (0: parent)")
    ax.set_title("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
