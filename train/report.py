"""What a finished run reports: metrics.json, curves.png, confusion.png, run.json, report.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tl2edge import rundir
from tl2edge.metrics import classification_metrics, plot_confusion


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [h.get(metric, np.nan) for h in history], "o-", label=f"train {metric}")
        ax.plot(
            epochs, [h.get(f"val_{metric}", np.nan) for h in history], "s-", label=f"val {metric}"
        )
        starts = [
            h["epoch"] for i, h in enumerate(history) if i and h["phase"] != history[i - 1]["phase"]
        ]
        for s in starts:
            ax.axvline(s - 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch (dashed line: next phase)")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_reports(
    run: rundir.RunDir, model, data, history: list[dict], run_record: dict, *, batch_size: int
) -> dict:
    if data.val.x is None:  # streamed from disk: predict in the dataset's order
        from tl2edge.train.data import make_dataset

        val = make_dataset(data.val, batch_size=batch_size, training=False, seed=0)
        probs = model.predict(val, verbose=0)
    else:
        probs = model.predict(data.val.x.astype(np.float32), batch_size=batch_size, verbose=0)
    metrics = classification_metrics(data.val.y, probs.argmax(axis=1), data.classes)
    rundir.write_json(run.file(rundir.METRICS), metrics)
    plot_curves(history, run.file(rundir.CURVES))
    plot_confusion(metrics["confusion_matrix"], list(data.classes), run.file(rundir.CONFUSION))
    run_record = {**run_record, "val_accuracy": metrics["accuracy"]}
    run.write_record(run_record)
    run.write_text(rundir.REPORT, _report_md(metrics, history, run_record))
    return metrics


def _report_md(metrics: dict, history: list[dict], run: dict) -> str:
    cfg = run["config"]
    lines = [
        "# Training report",
        "",
        f"- data: `{cfg['data_dir']}` ({run['counts']['train']} train / {run['counts']['val']} validation images, "
        f"{len(run['classes'])} classes), fingerprint `{run['data_fingerprint'][:16]}`",
        f"- unreadable images skipped: {len(run['bad_images'])}",
        f"- model: VGG16 at {cfg['image_size']}x{cfg['image_size']}, backbone weights: {run['weights']}",
        _schedule_line(run),
        f"- device: {run['device']}",
        f"- time: {', '.join(f'{k} {v:.1f} s' for k, v in run['timings'].items())}",
        "",
        f"**Validation accuracy: {metrics['accuracy']:.1%}** (macro F1 {metrics['macro_f1']:.3f})",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in metrics["per_class"].items():
        lines.append(
            f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
        )
    lines += [
        "",
        "| epoch | phase | loss | accuracy | val loss | val accuracy |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for h in history:
        lines.append(
            f"| {h['epoch']} | {h['phase']} | {h.get('loss', float('nan')):.4f} | {h.get('accuracy', float('nan')):.3f} "
            f"| {h.get('val_loss', float('nan')):.4f} | {h.get('val_accuracy', float('nan')):.3f} |"
        )
    lines += ["", "![training curves](curves.png)", "", "![confusion matrix](confusion.png)", ""]
    return "\n".join(lines)


def _schedule_line(run: dict) -> str:
    """How the weights were trained: the training recipe, or a pruned run's own fine-tuning
    (its config.json is the parent's, kept for export, so it does not describe this run)."""
    cfg = run["config"]
    if "pruning" in run:
        steps = run["pruning"]["rounds"]
        kept = ", ".join(f"{r['kept_epoch']}/{r['epochs']}" for r in steps)
        return (
            f"- fine-tuning: {len(steps)} pruning step(s), epoch kept / run per step: {kept} "
            f"(lowest validation loss); seed {run['seed']}"
        )
    strategy = cfg["strategy"] if cfg["weights"] != "none" else "from scratch"
    return (
        f"- strategy: {strategy}; epochs head/fine-tune: "
        f"{cfg['epochs_head']}/{cfg['epochs_finetune']}; seed {run['seed']}"
    )
