"""Shared test set-up. Run everything: `make test`; one folder: `.venv/bin/pytest tests/core`."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests are CPU-only, even on a GPU box
