"""Logging set-up shared by every command: readable lines, or one JSON object per line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `extra={...}` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...` with the extra fields appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {
            k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        }
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("tl2edge").setLevel(level)


def quiet_tensorflow(level: str) -> contextlib.AbstractContextManager:
    """For a command that may load TensorFlow: unless `level` is DEBUG, keep TensorFlow's
    start-up chatter (oneDNN notice, CUDA probing, absl banner) out of the user's terminal.
    Call before TensorFlow is imported; run the command inside the returned context."""
    if level == "DEBUG":
        return contextlib.nullcontext()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # tf.function retracing notes and the like are for TensorFlow developers, not users.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return filter_native_stderr()


# C++ log lines written before (or despite) TF_CPP_MIN_LOG_LEVEL: absl's "I0000 00:00:... file.cc:12]"
# format, the absl pre-init banner and the CPU-feature notice's second line.
_NATIVE_NOISE = re.compile(
    r"^(?:[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\]"
    r"|\d{4}-\d\d-\d\d [\d:.]+: [IW] \S+:\d+\]"
    r"|E\d{4} [\d:.]+\s+\d+ \S+:\d+\] .*(?:cuInit|cuda|CUDA|cuDNN|cuBLAS|cuFFT|already registered)"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: .* rebuild TensorFlow)"
)


def is_native_noise(line: str) -> bool:
    """True for TensorFlow's C++ start-up chatter (oneDNN notice, CUDA probing, absl banner)."""
    return bool(_NATIVE_NOISE.match(line))


@contextlib.contextmanager
def filter_native_stderr() -> Iterator[None]:
    """Drop TensorFlow's C++ start-up lines from file descriptor 2 while the block runs.

    TensorFlow's C++ side writes them straight to fd 2, some before absl's logging (and so
    TF_CPP_MIN_LOG_LEVEL) is initialised; only a filter on the descriptor catches them. Every
    other byte is forwarded unchanged: partial lines (progress bars) at once, whole lines
    after the check.
    """
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                out = b"".join(
                    line + b"\n"
                    for line in lines
                    if not is_native_noise(line.decode("utf-8", "replace"))
                )
                if pending and pending[:1] not in (b"I", b"W", b"E", b"T"):  # maybe a C++ line
                    out, pending = out + pending, b""
                if out:
                    os.write(original, out)
            if pending and not is_native_noise(pending.decode("utf-8", "replace")):
                os.write(original, pending)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=5)
        os.close(original)
