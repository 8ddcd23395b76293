"""Calibration from a run whose training data did not fit in memory (streamed).

Run: .venv/bin/pytest tests/export/test_stream_calibration.py -q
"""

from __future__ import annotations

import numpy as np

from tl2edge.export import rundir
from tl2edge.rundir import CONFIG, RunDir, write_json
from tl2edge.synth import write_dataset


def test_streamed_run_calibrates_on_the_same_sample_as_in_memory(tmp_path, monkeypatch):
    from tl2edge.train import data

    folder = write_dataset(
        tmp_path / "d", task="target", per_class=6, size=32, classes=3, seed=2, progress=False
    )
    config = {"data_dir": str(folder), "image_size": 32, "seed": 5}
    run_dir = RunDir(tmp_path)
    write_json(run_dir.file(CONFIG), config)  # no split.json: export replays the split
    run = rundir.Run(run_dir, ("arrow", "crescent", "hexagon"), config)
    train_mem, val_mem = rundir.load_run_images(run)
    monkeypatch.setattr(data, "available_memory_bytes", lambda: 20_000)  # 18 images = 55 KB
    train_st, val_st = rundir.load_run_images(run)
    assert (
        train_mem.x is not None and train_st.x is None and len(train_st.paths) == len(train_mem.x)
    )
    assert np.array_equal(val_mem.x, val_st.x) and np.array_equal(val_mem.y, val_st.y)
    for n in (4, 100):
        a = rundir.sample(train_mem, n, seed=3)
        b = rundir.sample(train_st, n, seed=3)
        assert a.shape == b.shape and np.array_equal(a, b)
