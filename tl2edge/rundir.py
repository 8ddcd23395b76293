"""The run dir, the hand-off from training to export: its file names, what "complete" means,
the saved train/validation split and the data fingerprint. TensorFlow-free.

`tl2edge train` writes a run dir only through this module; export, `--weights RUN_DIR`,
`tl2edge backbone`, the demo and the benchmarks read it only through this module.

    RUN_DIR/
      model.keras     the inference model (float32, no augmentation, preprocessing inside)
      labels.json     class names, in label-index order
      config.json     the TrainConfig as JSON
      split.json      the exact split: {"format", "classes", "fingerprint", "train", "val"},
                      train/val = [[path, label index], ...], paths relative to the data
                      dir (val: to the --val-dir when one was given), '/'-separated
      state.json      {"status": running | interrupted | complete, "phases_done", "timings"}
      run.json        the run record (config, seed, versions, data fingerprint, timings, ...)
      history.json, metrics.json, report.md, curves.png, confusion.png, history-*.csv,
      checkpoints/ (while running), tensorboard/

A run is complete when model.keras, labels.json, config.json and state.json exist and the
state says "complete" (`RunDir.open` checks exactly that).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl2edge.errors import UserError

log = logging.getLogger("tl2edge")

MODEL = "model.keras"
LABELS = "labels.json"
CONFIG = "config.json"
SPLIT = "split.json"
STATE = "state.json"
RECORD = "run.json"
HISTORY = "history.json"
METRICS = "metrics.json"
REPORT = "report.md"
CURVES = "curves.png"
CONFUSION = "confusion.png"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
REQUIRED = (MODEL, LABELS, CONFIG, STATE)  # a complete run has these, and state "complete"
SPLIT_FORMAT = 1

COMPLETE, RUNNING, INTERRUPTED = "complete", "running", "interrupted"


class Fingerprint:
    """sha256 over (relative path, sha256 of the bytes) of every image file, in scan order:
    the data dir's files, then the validation dir's. Unreadable (but present) files count."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, relative_path: str, data: bytes) -> None:
        self.add_digest(relative_path, hashlib.sha256(data).digest())

    def add_digest(self, relative_path: str, digest: bytes) -> None:
        """`add` for a file whose sha256 is already known."""
        self._digest.update(relative_path.encode() + b"\0" + digest)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def relative(path: Path, root: Path) -> str:
    """`path` relative to `root`, '/'-separated (the form split.json and the fingerprint use)."""
    return path.relative_to(root).as_posix()


def data_fingerprint(data_dir: str | Path, val_dir: str | Path | None = None) -> str:
    """The fingerprint of an image folder (and validation folder) as they are now."""
    from tl2edge.images import scan_image_folder

    fp = Fingerprint()
    for folder, what in ((data_dir, "data dir"), (val_dir, "--val-dir")):
        if folder is None:
            continue
        scanned = scan_image_folder(folder, what=what)
        for path, _ in scanned.files:
            try:
                fp.add(relative(path, scanned.root), path.read_bytes())
            except OSError:
                continue
    return fp.hexdigest()


@dataclass(frozen=True)
class SavedSplit:
    """The exact train/validation file lists of a run (split.json)."""

    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]  # (path relative to the data dir, label index)
    val: tuple[tuple[str, int], ...]  # relative to the val dir if the run had one, else data dir
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SPLIT_FORMAT,
            "classes": list(self.classes),
            "fingerprint": self.fingerprint,
            "train": [list(e) for e in self.train],
            "val": [list(e) for e in self.val],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SavedSplit:
        return cls(
            classes=tuple(str(c) for c in data["classes"]),
            train=tuple((str(p), int(y)) for p, y in data["train"]),
            val=tuple((str(p), int(y)) for p, y in data["val"]),
            fingerprint=str(data["fingerprint"]),
        )


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


class RunDir:
    """A training run dir. `create` (training), `resume` (training), `open` (everyone else)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    # --- the three ways in ----------------------------------------------------------------

    @staticmethod
    def check_new(path: str | Path, *, overwrite: bool) -> None:
        """Refuse an existing non-empty `path` unless `overwrite` (before any heavy work)."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
            raise UserError(
                f"run dir {path} exists; pass --overwrite to replace it, --resume to continue it, "
                "or choose another --out"
            )

    @classmethod
    def create(cls, path: str | Path, *, overwrite: bool = False) -> RunDir:
        """A fresh, empty run dir (an existing one is removed only with `overwrite`)."""
        path = Path(path)
        cls.check_new(path, overwrite=overwrite)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        path.mkdir(parents=True)
        return cls(path)

    @classmethod
    def resume(cls, path: str | Path) -> RunDir:
        """A started, unfinished run with a checkpoint, or UserError saying why not."""
        run = cls(path)
        state = run.state()
        if not state or not run.file(CONFIG).is_file():
            raise UserError(
                f"--resume: {run.path} holds no resumable run (no {STATE}/{CONFIG}); "
                "start it without --resume"
            )
        if state.get("status") == COMPLETE:
            raise UserError(
                f"--resume: the run in {run.path} is already complete; nothing to resume"
            )
        if not run.file(CHECKPOINTS).is_dir():
            raise UserError(
                f"--resume: {run.path} has no checkpoint to resume from; start the run again with "
                "--overwrite"
            )
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """A complete run (see the module doc), or UserError saying why not."""
        run = cls(path)
        where = "pass the --out folder of `tl2edge train`"
        if not run.path.exists():
            raise UserError(f"run dir {run.path} does not exist; {where}")
        if not run.path.is_dir():
            raise UserError(f"run dir {run.path} is not a folder; {where}")
        missing = [f for f in REQUIRED if not run.file(f).is_file()]
        if missing:
            raise UserError(
                f"{run.path} is not a tl2edge run dir: missing {', '.join(missing)} "
                "(expected the --out folder of a finished `tl2edge train`)"
            )
        status = run.state().get("status")
        if status != COMPLETE:
            raise UserError(
                f"the run in {run.path} is not complete (status {status!r}); "
                f"finish it first: tl2edge train ... --out {run.path} --resume"
            )
        labels = run.labels()
        if len(labels) < 2:
            raise UserError(f"{run.file(LABELS)} must list at least 2 class names, got {labels!r}")
        config = run.config_json()
        if "image_size" not in config or "data_dir" not in config:
            raise UserError(
                f"{run.file(CONFIG)} lacks image_size/data_dir; not a tl2edge run config"
            )
        return run

    @classmethod
    def is_complete(cls, path: str | Path) -> bool:
        try:
            cls.open(path)
        except UserError:
            return False
        return True

    # --- files ----------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def model_path(self) -> Path:
        return self.file(MODEL)

    def _read(self, name: str, default: Any = None) -> Any:
        path = self.file(name)
        if default is not None and not path.is_file():
            return default
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not readable JSON ({exc})") from exc

    def state(self) -> dict[str, Any]:
        return self._read(STATE, default={})

    def write_state(self, status: str, **state: Any) -> None:
        write_json(self.file(STATE), {"status": status, **state})

    def labels(self) -> tuple[str, ...]:
        labels = self._read(LABELS)
        if not isinstance(labels, list):
            raise UserError(f"{self.file(LABELS)} must be a JSON list of class names")
        return tuple(str(x) for x in labels)

    def write_labels(self, classes: tuple[str, ...] | list[str]) -> None:
        write_json(self.file(LABELS), list(classes))

    def config_json(self) -> dict[str, Any]:
        return self._read(CONFIG)

    def train_config(self):
        """The run's TrainConfig (unknown keys of older/newer versions are ignored)."""
        from tl2edge.train.config import TrainConfig

        return TrainConfig.from_json(self.config_json())

    def write_config(self, cfg) -> None:
        """Save a config dataclass (anything with `to_json()`)."""
        write_json(self.file(CONFIG), cfg.to_json())

    @property
    def image_size(self) -> int:
        return int(self.config_json()["image_size"])

    def split(self) -> SavedSplit | None:
        """The saved split, or None for a run written before split.json existed."""
        if not self.file(SPLIT).is_file():
            return None
        try:
            return SavedSplit.from_json(self._read(SPLIT))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{self.file(SPLIT)} is damaged ({exc}); re-run training") from exc

    def write_split(self, split: SavedSplit) -> None:
        write_json(self.file(SPLIT), split.to_json())

    def record(self) -> dict[str, Any]:
        """run.json (empty for a run that has not finished)."""
        return self._read(RECORD, default={})

    def write_record(self, record: dict[str, Any]) -> None:
        write_json(self.file(RECORD), record)

    def write_text(self, name: str, text: str) -> None:
        self.file(name).write_text(text)

    def data_dirs(self) -> tuple[Path, Path]:
        """(root of the training paths, root of the validation paths) of the saved split."""
        cfg = self.config_json()
        data_dir = Path(cfg["data_dir"])
        return data_dir, Path(cfg["val_dir"]) if cfg.get("val_dir") else data_dir

    def check_data(self, *, allow_changed: bool = False) -> SavedSplit | None:
        """The saved split after checking that the data dir still holds what training saw.

        A changed data dir (files added, removed or edited: the fingerprint differs) is
        refused with UserError unless `allow_changed` (then only a warning is logged).
        Returns None for a run without split.json.
        """
        split = self.split()
        cfg = self.config_json()
        data_dir, _ = self.data_dirs()
        if not data_dir.is_dir():
            raise UserError(
                f"the run's data dir {data_dir} (from {self.file(CONFIG)}) does not exist here; "
                "its validation images are needed to measure accuracy: restore the folder "
                "or re-create it at that path"
            )
        if split is None:
            return None
        try:
            now = data_fingerprint(data_dir, cfg.get("val_dir"))
        except UserError as exc:  # e.g. a class folder is gone
            now = f"unreadable ({exc})"
        if now != split.fingerprint:
            message = (
                f"the data dir {data_dir} changed since the run in {self.path} was trained "
                f"(data fingerprint {now[:12]} now, {split.fingerprint[:12]} at training): "
                "files were added, removed or edited"
            )
            if not allow_changed:
                raise UserError(
                    message + "; restore the folder as it was, or pass --allow-changed-data to "
                    "use the run's saved split with the files as they are now"
                )
            log.warning("%s; --allow-changed-data: using the saved split as it is now", message)
        return split

    def split_files(
        self, split: SavedSplit
    ) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
        """(train, val) of a saved split as (absolute-or-as-given path, label) lists."""
        train_root, val_root = self.data_dirs()
        return (
            [(train_root / p, y) for p, y in split.train],
            [(val_root / p, y) for p, y in split.val],
        )
