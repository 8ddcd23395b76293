"""Multi-worker training: who this process is in TF_CONFIG, and where it writes.

Every worker runs the same `tl2edge train` command under MultiWorkerMirroredStrategy.
Only the chief (task type `chief`, or worker 0 when the cluster has no chief) writes the
run dir given by --out; the other workers write to a temporary directory of their own, as
TensorFlow's multi-worker guide recommends, so that they never clobber the chief's files
on shared storage. Pure functions of the environment: testable without TensorFlow.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tl2edge.errors import UserError


@dataclass(frozen=True)
class Role:
    task_type: str
    index: int
    workers: tuple[str, ...]  # every task address, chief first

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (
            self.task_type == "worker" and self.index == 0 and not self._has_chief
        )

    @property
    def _has_chief(self) -> bool:
        return any(w.startswith("chief/") for w in self.workers)

    def describe(self) -> dict:
        return {
            "task": f"{self.task_type}/{self.index}",
            "chief": self.is_chief,
            "cluster": list(self.workers),
        }


def role(environ=os.environ) -> Role | None:
    """This process's place in TF_CONFIG, or None without TF_CONFIG."""
    raw = environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        cluster = spec["cluster"]
        task = spec["task"]
        task_type, index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"TF_CONFIG is not valid ({exc.__class__.__name__}: {exc}); it must be JSON like "
            '{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": 0}}'
        ) from exc
    workers = tuple(
        f"{kind}/{i}={addr}"
        for kind in ("chief", "worker")
        for i, addr in enumerate(cluster.get(kind, []))
    )
    if task_type not in ("chief", "worker") or index >= len(cluster.get(task_type, [])):
        raise UserError(
            f"TF_CONFIG task {task_type}/{index} is not in its cluster {cluster}; "
            "the task must be one of the listed chief/worker entries"
        )
    return Role(task_type, index, workers)


def run_dir_for(out: Path, environ=os.environ) -> Path:
    """--out for the chief (and single-process runs); a fresh temp dir for other workers."""
    r = role(environ)
    if r is None or r.is_chief:
        return out
    return Path(tempfile.mkdtemp(prefix=f"tl2edge-{r.task_type}{r.index}-"))


def adapt_for_multi_worker(trainer, image_size: int) -> None:
    """Work around two places where Keras 3's `fit` breaks under MultiWorkerMirroredStrategy
    (keras-team/keras#20585), for this model only:

    - `fit` first all-reduces a distributed batch to build the compiled loss and metrics
      ("Attempt to convert a value (PerReplica...)"): build them here from a local batch of
      the right shape, so that step has nothing left to do, and skip it;
    - the step's logs are scalars, which its cross-worker mean reduces along axis 0
      ("Invalid reduction dimension 0"): return them with a leading axis of 1.
    """
    import numpy as np
    from keras import ops

    batch = (np.zeros((1, image_size, image_size, 3), np.float32), np.zeros((1,), np.int32))
    trainer._symbolic_build(data_batch=batch)
    trainer._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    def with_axis(step):
        def wrapped(data):
            return {k: ops.reshape(v, (1,)) for k, v in step(data).items()}

        return wrapped

    trainer.train_step = with_axis(trainer.train_step)
    trainer.test_step = with_axis(trainer.test_step)
