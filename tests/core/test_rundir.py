"""The run-dir contract (tl2edge.rundir): complete, resumable, split, data fingerprint.
Run: .venv/bin/pytest tests/core/test_rundir.py -q
"""

from __future__ import annotations

import json
import logging

import pytest

from tl2edge import rundir
from tl2edge.errors import UserError
from tl2edge.rundir import RunDir, SavedSplit, data_fingerprint
from tl2edge.synth import write_dataset


@pytest.fixture
def data(tmp_path):
    return write_dataset(
        tmp_path / "data", task="target", per_class=3, size=32, classes=2, seed=0, progress=False
    )


def _complete_run(path, data) -> RunDir:
    run = RunDir.create(path)
    run.file(rundir.MODEL).write_bytes(b"model")
    run.write_config(
        type("Cfg", (), {"to_json": lambda self: {"data_dir": str(data), "image_size": 32}})()
    )
    classes = sorted(p.name for p in data.iterdir())
    run.write_labels(classes)
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    run.write_split(
        SavedSplit(
            classes=tuple(classes),
            train=tuple((f, classes.index(f.split("/")[0])) for f in files[1:]),
            val=((files[0], 0),),
            fingerprint=data_fingerprint(data),
        )
    )
    run.write_state(rundir.COMPLETE)
    return run


def test_complete_means_required_files_and_state(tmp_path, data):
    run = _complete_run(tmp_path / "run", data)
    assert RunDir.is_complete(run.path)
    assert RunDir.open(run.path).labels() == tuple(sorted(p.name for p in data.iterdir()))
    run.write_state(rundir.INTERRUPTED)
    with pytest.raises(UserError, match="not complete \\(status 'interrupted'\\)"):
        RunDir.open(run.path)
    run.write_state(rundir.COMPLETE)
    run.model_path.unlink()
    with pytest.raises(UserError, match=r"missing model\.keras"):
        RunDir.open(run.path)
    assert not RunDir.is_complete(run.path)


def test_create_refuses_an_existing_dir_without_overwrite(tmp_path, data):
    run = _complete_run(tmp_path / "run", data)
    with pytest.raises(UserError, match="--overwrite"):
        RunDir.create(run.path)
    assert RunDir.is_complete(run.path)  # nothing lost
    fresh = RunDir.create(run.path, overwrite=True)
    assert list(fresh.path.iterdir()) == []


def test_resume_needs_a_started_unfinished_run_with_checkpoint(tmp_path, data):
    with pytest.raises(UserError, match="no resumable run"):
        RunDir.resume(tmp_path / "nothing")
    run = _complete_run(tmp_path / "run", data)
    with pytest.raises(UserError, match="already complete"):
        RunDir.resume(run.path)
    run.write_state(rundir.INTERRUPTED)
    with pytest.raises(UserError, match="no checkpoint"):
        RunDir.resume(run.path)
    run.file(rundir.CHECKPOINTS).mkdir()
    assert RunDir.resume(run.path).path == run.path


def test_split_file_round_trips_with_relative_paths(tmp_path, data):
    run = _complete_run(tmp_path / "run", data)
    saved = json.loads(run.file(rundir.SPLIT).read_text())
    assert saved["format"] == rundir.SPLIT_FORMAT
    assert all(not p.startswith("/") and "/" in p for p, _ in saved["train"] + saved["val"])
    split = run.split()
    assert split == SavedSplit.from_json(saved)
    train, val = run.split_files(split)
    assert all(p.is_file() for p, _ in train + val)
    assert len(train) + len(val) == 6


def test_fingerprint_follows_content_names_and_additions(tmp_path, data):
    before = data_fingerprint(data)
    assert before == data_fingerprint(data)
    first = sorted(data.rglob("*.png"))[0]
    first.write_bytes(first.read_bytes() + b"\0")
    edited = data_fingerprint(data)
    assert edited != before
    first.rename(first.with_name("renamed.png"))
    assert data_fingerprint(data) not in (before, edited)


def test_check_data_refuses_a_changed_data_dir_unless_allowed(tmp_path, data, caplog):
    run = _complete_run(tmp_path / "run", data)
    assert run.check_data() == run.split()
    extra = data / sorted(p.name for p in data.iterdir())[0] / "added.png"
    extra.write_bytes(next(data.rglob("*.png")).read_bytes())
    with pytest.raises(UserError, match=r"changed since the run .* --allow-changed-data"):
        run.check_data()
    with caplog.at_level(logging.WARNING):
        assert run.check_data(allow_changed=True) == run.split()
    assert "--allow-changed-data" in caplog.text


def test_old_run_without_split_and_missing_data_dir(tmp_path, data):
    run = _complete_run(tmp_path / "run", data)
    run.file(rundir.SPLIT).unlink()
    assert run.split() is None and run.check_data() is None
    config = run.config_json()
    run.file(rundir.CONFIG).write_text(json.dumps({**config, "data_dir": str(tmp_path / "gone")}))
    with pytest.raises(UserError, match="does not exist here"):
        run.check_data()
