"""`--baseline scratch`: train the same model from scratch with the same budget, report the gain.

Transfer learning is only worth it when it beats the plain alternative on the user's data. The
baseline is a complete run dir of its own, RUN_DIR/baseline-scratch/, trained on the same split
(same data, seed, validation) for as many epochs as the transfer run had; the transfer run's
run.json gets a `baseline` record and its report.md a section stating the gain, with a warning
when training from scratch did better.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from tl2edge import rundir
from tl2edge.rundir import RunDir
from tl2edge.train.config import TrainConfig

log = logging.getLogger("tl2edge.train")

BASELINES = ("none", "scratch")
BASELINE_DIR = "baseline-scratch"


def scratch_config(cfg: TrainConfig) -> TrainConfig:
    """The same run from scratch: every layer trains for the epochs the transfer run had."""
    epochs = cfg.epochs_head + (cfg.epochs_finetune if cfg.strategy != "feature-extraction" else 0)
    return dataclasses.replace(
        cfg, weights="none", baseline="none", epochs_head=epochs, epochs_finetune=0
    )


def _train_seconds(run: dict) -> float:
    return sum(v for k, v in run["timings"].items() if k != "data_s")


def run_baseline(cfg: TrainConfig, out: Path) -> dict:
    """Train the baseline into OUT/baseline-scratch and add the comparison to OUT's reports."""
    from tl2edge.train.fit import train

    log.info("baseline: the same model from scratch, same epochs, into %s", out / BASELINE_DIR)
    base_dir = train(scratch_config(cfg), out / BASELINE_DIR, overwrite=True)
    run, base = RunDir.open(out), RunDir.open(base_dir)
    transfer, scratch = run.record(), base.record()
    record = {
        "kind": "scratch",
        "run_dir": BASELINE_DIR,
        "epochs": scratch["config"]["epochs_head"],
        "val_accuracy": scratch["val_accuracy"],
        "train_s": round(_train_seconds(scratch), 1),
        "transfer_val_accuracy": transfer["val_accuracy"],
        "transfer_train_s": round(_train_seconds(transfer), 1),
        "gain_points": round(100 * (transfer["val_accuracy"] - scratch["val_accuracy"]), 2),
    }
    run.write_record({**transfer, "baseline": record})
    report = run.file(rundir.REPORT).read_text()
    run.write_text(rundir.REPORT, report.rstrip("\n") + "\n\n" + baseline_md(record) + "\n")
    log.info(
        "transfer %.1f%% vs scratch %.1f%% validation accuracy: gain %+.1f points",
        100 * record["transfer_val_accuracy"],
        100 * record["val_accuracy"],
        record["gain_points"],
    )
    return record


def baseline_md(b: dict) -> str:
    lines = [
        "## Transfer against training from scratch",
        "",
        "| run | validation accuracy | training time |",
        "|---|---:|---:|",
        f"| this run (transfer) | {b['transfer_val_accuracy']:.1%} | {b['transfer_train_s']:.1f} s |",
        f"| same model from scratch, {b['epochs']} epochs (`{b['run_dir']}/`) "
        f"| {b['val_accuracy']:.1%} | {b['train_s']:.1f} s |",
        "",
        f"**Transfer gain: {b['gain_points']:+.1f} points** of validation accuracy.",
    ]
    if b["gain_points"] < 0:
        lines += [
            "",
            "Training from scratch did better on this data: the pretrained backbone does not "
            "help here. Try `--strategy discriminative` or `all-blocks` with more epochs, other "
            f"`--weights`, or use the from-scratch model in `{b['run_dir']}/`.",
        ]
    return "\n".join(lines)
