"""ONNX Runtime sessions for the server: device choice (see `tl2edge.serve.providers`, the
one policy shared with bench, evaluate and export) and warm-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tl2edge.serve.providers import (
    DEVICES,
    DeviceUnavailable,
    RuntimeConfig,
    Selection,
    select_session,
)

__all__ = [
    "DEVICES",
    "DeviceUnavailable",
    "RuntimeConfig",
    "Selection",
    "create_session",
    "warm_up",
]


def create_session(
    path: str | Path, config: RuntimeConfig, *, failed: dict[str, str] | None = None
) -> Selection:
    """A verified session on the configured device (for `auto`: the fastest measured one
    that did not fail the accuracy gate); raises DeviceUnavailable when it cannot be had."""
    return select_session(path, config, failed=failed)


def warm_up(session: Any, input_name: str, shape: tuple[int, ...], dtype: Any) -> None:
    """Run once so the first real request does not pay for allocation and kernel set-up."""
    session.run(None, {input_name: np.zeros(shape, dtype=dtype)})
