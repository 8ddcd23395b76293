"""Export reads the run's saved split and refuses a data dir that changed since training.
Run: .venv/bin/pytest tests/export/test_rundir_split.py -q
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from tl2edge import rundir
from tl2edge.errors import UserError
from tl2edge.export.rundir import load_run_images, open_run


@pytest.fixture
def run_copy(run_dir, tmp_path):
    """The fixture run and its data dir, copied so that the test may change them."""
    data = shutil.copytree(run_dir.parent / "data", tmp_path / "data")
    run = shutil.copytree(run_dir, tmp_path / "run")
    config = json.loads((run / rundir.CONFIG).read_text())
    (run / rundir.CONFIG).write_text(json.dumps({**config, "data_dir": str(data)}))
    return run, data


def test_training_and_the_run_dir_agree_on_the_fingerprint(run_copy):
    run, data = run_copy
    split = rundir.RunDir.open(run).split()
    assert split.fingerprint == rundir.data_fingerprint(data)


def test_export_uses_exactly_the_saved_split(run_copy):
    run, _ = run_copy
    saved = rundir.RunDir(run).split()
    # Move one validation image to training in the saved split: export must follow the file.
    moved = saved.val[0]
    edited = rundir.SavedSplit(
        saved.classes, (*saved.train, moved), saved.val[1:], saved.fingerprint
    )
    rundir.RunDir(run).write_split(edited)
    train, val = load_run_images(open_run(run))
    assert len(train.x) == len(saved.train) + 1 and len(val.x) == len(saved.val) - 1
    assert list(val.y) == [y for _, y in saved.val[1:]]


def test_a_changed_data_dir_is_refused_unless_allowed(run_copy, caplog):
    run, data = run_copy
    first = sorted(data.rglob("*.png"))[0]
    shutil.copy(first, first.with_name("extra.png"))
    with pytest.raises(UserError, match=r"changed since the run .*--allow-changed-data"):
        load_run_images(open_run(run))
    with caplog.at_level(logging.WARNING):
        train, val = load_run_images(open_run(run), allow_changed_data=True)
    saved = rundir.RunDir(run).split()
    assert (len(train.x), len(val.x)) == (len(saved.train), len(saved.val))
    first.unlink()  # a file of the split is gone: even the flag cannot help
    with pytest.raises(UserError, match="saved split are gone"):
        load_run_images(open_run(run), allow_changed_data=True)


def test_a_run_without_split_file_replays_the_split(run_copy, caplog):
    run, _ = run_copy
    expected = load_run_images(open_run(run))
    (run / rundir.SPLIT).unlink()
    with caplog.at_level(logging.WARNING):
        train, val = load_run_images(open_run(run))
    assert "replaying the split" in caplog.text
    assert np.array_equal(val.x, expected[1].x) and np.array_equal(val.y, expected[1].y)
    assert np.array_equal(train.x, expected[0].x)
