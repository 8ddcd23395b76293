"""CPU priority inside the server: request handling below the model (Linux).

Run: .venv/bin/pytest tests/serve/test_priority.py -q
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from models import write_version
from servekit import ServerThread, random_pixels

from tl2edge.errors import UserError
from tl2edge.serve import priority
from tl2edge.serve.server import ServeConfig

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="thread niceness is Linux's"
)


def _in_lowered_thread(fn):  # type: ignore[no-untyped-def]
    """Run fn on a fresh thread lowered by 3 steps; its result."""
    out = {}

    def body() -> None:
        priority.lower_this_thread(3)
        out["value"] = fn()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out["value"]


def test_pools_filled_by_the_spawner_keep_the_process_priority():
    base = priority.base_niceness()
    kept = _in_lowered_thread(lambda: priority.normal_priority_executor(2, "kept"))
    try:
        # made from a lowered thread and used from one: every worker still at the base
        seen = {f.result() for f in [kept.submit(priority.niceness) for _ in range(8)]}
        assert seen == {base}
        assert _in_lowered_thread(lambda: kept.submit(priority.niceness).result()) == base
    finally:
        kept.shutdown()


def _new_thread_niceness() -> int:
    out = []
    t = threading.Thread(target=lambda: out.append(priority.niceness()))
    t.start()
    t.join()
    return out[0]


def test_inheritance_is_what_the_spawner_avoids():
    base = priority.base_niceness()
    assert _in_lowered_thread(_new_thread_niceness) == min(19, base + 3)


def test_server_lowers_request_threads_and_keeps_model_threads(tmp_path):
    write_version(tmp_path / "repo", "tiny-int8", 1)
    with ServerThread(tmp_path / "repo", config=ServeConfig(request_nice=4)) as server:
        base = priority.base_niceness()

        async def loop_niceness() -> int:
            return priority.niceness()

        assert server.call(loop_niceness()) == min(19, base + 4)
        model = server.server.plane.get("tiny-int8")
        batcher_nice = model.batcher._executor.submit(priority.niceness).result()
        decoder_nice = server.server.plane._decoder.submit(priority.niceness).result()
        assert batcher_nice == decoder_nice == base
        # and the model still answers through the lowered loop
        from tl2edge.client import Client

        with Client(server.address, timeout=20) as client:
            probs = client.infer("tiny-int8", random_pixels(1))
        assert np.isclose(float(probs.sum()), 1.0, atol=1e-5)


def test_request_nice_zero_leaves_the_loop_alone(tmp_path):
    write_version(tmp_path / "repo", "tiny-int8", 1)
    with ServerThread(tmp_path / "repo", config=ServeConfig(request_nice=0)) as server:

        async def loop_niceness() -> int:
            return priority.niceness()

        # as born: a thread started now by this one has the same niceness
        assert server.call(loop_niceness()) == _new_thread_niceness()


@pytest.mark.parametrize("bad", [-1, 20])
def test_request_nice_out_of_range_is_a_clear_error(bad):
    with pytest.raises(UserError, match="--request-nice"):
        ServeConfig(request_nice=bad)
