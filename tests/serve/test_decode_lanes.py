"""Large images are decoded on their own one-thread lane, so they cannot delay small ones."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from servekit import png_bomb, png_bytes, random_pixels

from tl2edge.images import decode_rgb_bounded
from tl2edge.serve.dataplane import DataPlane, request_pixels
from tl2edge.serve.errors import Overloaded

SIZE = (32, 32)
MODEL = SimpleNamespace(image_size=SIZE)  # decode() only reads the model's input size


def _plane(**kwargs) -> DataPlane:  # type: ignore[no-untyped-def]
    plane = DataPlane(None, **kwargs)  # type: ignore[arg-type]
    threads: list[str] = []
    decode_all = plane._decode_all

    def recording(images, size):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return decode_all(images, size)

    plane._decode_all = recording  # type: ignore[method-assign]
    plane.threads = threads  # type: ignore[attr-defined]
    return plane


def test_large_images_go_to_the_large_lane_and_decode_the_same():
    small = png_bytes(random_pixels(1, 40, seed=1)[0])  # 1,600 pixels
    large = png_bytes(random_pixels(1, 110, seed=2)[0])  # 12,100 pixels
    plane = _plane(large_image_pixels=9_000)
    try:

        async def run():  # type: ignore[no-untyped-def]
            return (
                await plane.decode(MODEL, [small]),
                await plane.decode(MODEL, [large]),
                await plane.decode(MODEL, [small, small, small, small, small]),  # 8,000 pixels
                await plane.decode(MODEL, [small] * 6),  # 9,600 pixels in total: large
            )

        one_small, one_large, five_small, six_small = asyncio.run(run())
    finally:
        plane.close()
    lanes = [name.rsplit("_", 1)[0] for name in plane.threads]  # type: ignore[attr-defined]
    assert lanes == ["decode", "decode-large", "decode", "decode-large"]
    reference = decode_rgb_bounded(small, SIZE, max_pixels=10**9)
    np.testing.assert_array_equal(one_small[0], reference)
    np.testing.assert_array_equal(six_small[5], reference)
    np.testing.assert_array_equal(five_small[4], reference)
    np.testing.assert_array_equal(one_large[0], decode_rgb_bounded(large, SIZE, max_pixels=10**9))
    assert plane.large_pending == 0


def test_request_pixels_reads_headers_and_array_shapes():
    assert request_pixels([png_bomb(3000, 2000), np.zeros((10, 20, 3), np.uint8)]) == 6_000_200
    assert request_pixels([b"not an image"]) == 0  # the decode says why


def test_large_requests_beyond_the_queue_are_refused_with_resource_exhausted():
    big = png_bomb(200, 200)
    plane = _plane(large_image_pixels=1_000, large_image_queue=1)
    release = threading.Event()
    plane._large.submit(release.wait)  # the lane is busy

    async def run():  # type: ignore[no-untyped-def]
        waiting = [asyncio.ensure_future(plane.decode(MODEL, [big])) for _ in range(2)]
        await asyncio.sleep(0)
        assert plane.large_pending == 2  # one "decoding" (queued behind the busy one), one waiting
        with pytest.raises(Overloaded, match="--large-image-queue 1"):
            await plane.decode(MODEL, [big])
        small = await plane.decode(MODEL, [png_bytes(random_pixels(1, 8, seed=3)[0])])
        release.set()
        return small, await asyncio.gather(*waiting)

    try:
        small, done = asyncio.run(run())
    finally:
        release.set()
        plane.close()
    assert small.shape == (1, *SIZE, 3)  # small images pass while the large lane is full
    assert [d.shape for d in done] == [(1, *SIZE, 3)] * 2
    assert plane.large_pending == 0
