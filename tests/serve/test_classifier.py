"""tl2edge.v1.Classifier through tl2edge.client, and the predict/health CLI.

Run: .venv/bin/pytest tests/serve/test_classifier.py -q
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from models import LABELS, reference, write_version
from servekit import ServerThread, png_bytes, random_pixels

from tl2edge.cli import main
from tl2edge.client import Client
from tl2edge.images import decode_rgb


def expected_top(repo, pixels, k):
    probs = reference(repo / "tiny-int8" / "1", pixels)
    return [
        [(LABELS[i], int(i)) for i in np.argsort(-row, kind="stable")[:k]] for row in probs
    ], probs


def test_classify_encoded_and_raw_pixels(client, repo):
    big = random_pixels(2, size=30, seed=2)
    png, jpeg = png_bytes(big[0]), png_bytes(big[1], "JPEG")
    raw = random_pixels(1, seed=4)[0]
    rows = client.classify([png, jpeg, raw], top_k=2)
    pixels = np.stack([decode_rgb(png, 8), decode_rgb(jpeg, 8), raw])
    top, probs = expected_top(repo, pixels, 2)
    assert [[(p.label, p.index) for p in row] for row in rows] == top
    for i, row in enumerate(rows):
        assert row[0].score == pytest.approx(probs[i, row[0].index], abs=1e-6)


def test_classify_resizes_raw_pixels_and_clamps_top_k(client, repo):
    raw = random_pixels(1, size=17, seed=6)[0]
    rows = client.classify([raw], top_k=10)
    from tl2edge.images import resize_rgb

    top, _ = expected_top(repo, resize_rgb(raw, 8)[None], 3)
    assert [(p.label, p.index) for p in rows[0]] == top[0]


def test_classify_stream_in_order_with_errors_inline(server, repo):
    from tl2edge._proto import classifier_pb2 as cpb
    from tl2edge._proto import classifier_pb2_grpc as cpb_grpc

    frames = random_pixels(4, seed=8)
    requests = [
        cpb.ClassifyRequest(id=str(i), top_k=1, images=[cpb.Image(encoded=png_bytes(f))])
        for i, f in enumerate(frames)
    ]
    requests.insert(2, cpb.ClassifyRequest(id="bad", images=[cpb.Image(encoded=b"junk")]))
    with grpc.insecure_channel(server.address) as channel:
        responses = list(cpb_grpc.ClassifierStub(channel).ClassifyStream(iter(requests)))
    assert [r.id for r in responses] == ["0", "1", "bad", "2", "3"]
    assert responses[2].error.startswith("INVALID_ARGUMENT: image 0")
    top, _ = expected_top(repo, frames, 1)
    got = [r.results[0].predictions[0].index for r in responses if not r.error]
    assert got == [t[0][1] for t in top]


def test_client_stream_helper(client):
    frames = random_pixels(3, seed=1)
    results = list(client.classify_stream([[f] for f in frames], top_k=1))
    assert len(results) == 3 and all(len(r[0]) == 1 for r in results)


def test_classify_errors(client):
    with pytest.raises(grpc.RpcError) as exc:
        client.classify([b"not an image"])
    assert (
        exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "not a readable image" in exc.value.details()
    )
    with pytest.raises(grpc.RpcError) as exc:
        client.classify([], top_k=1)
    assert (
        exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "empty batch" in exc.value.details()
    )
    with pytest.raises(grpc.RpcError) as exc:
        client.classify([random_pixels(1)[0]], model="nope")
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_two_models_need_a_name_or_default(tmp_path):
    repo = tmp_path / "repo"
    write_version(repo, "a-fp32", 1, seed=1)
    write_version(repo, "b-int8", 1, seed=2, size=12)
    with ServerThread(repo) as s, Client(s.address) as c:
        with pytest.raises(grpc.RpcError) as exc:
            c.classify([random_pixels(1)[0]])
        assert (
            exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "a-fp32, b-int8" in exc.value.details()
        )
        assert c.classify([random_pixels(1)[0]], model="b-int8")[0]
        infos = {m.name: m for m in c.models()}
        assert infos["b-int8"].image_size == (12, 12) and not infos["a-fp32"].is_default
        assert c.health("a-fp32") == "SERVING" and c.health("zzz") == "SERVICE_UNKNOWN"


def test_predict_cli_table_and_json(server, tmp_path, capsys):
    paths = []
    for i, p in enumerate(random_pixels(2, size=10, seed=3)):
        paths.append(tmp_path / f"img{i}.png")
        paths[-1].write_bytes(png_bytes(p))
    assert (
        main(["predict", "--server", server.address, *map(str, paths), "--top-k", "2", "--json"])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert [d["image"] for d in data] == [str(p) for p in paths]
    assert all(len(d["predictions"]) == 2 and d["predictions"][0]["label"] in LABELS for d in data)
    assert main(["predict", "--server", server.address, str(paths[0])]) == 0
    table = capsys.readouterr().out
    assert "rank" in table and len(table.strip().splitlines()) == 1 + 3
    assert main(["predict", "--server", server.address, str(tmp_path / "missing.png")]) == 2
    assert "no such image" in capsys.readouterr().err


def test_health_cli_exit_codes(server, capsys):
    assert main(["health", "--server", server.address]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert main(["health", "--server", server.address, "--model", "nope"]) == 1
    assert main(["health", "--server", "127.0.0.1:1", "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out
