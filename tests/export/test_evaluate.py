"""`tl2edge evaluate`: an exported model on a labelled folder.

Run: .venv/bin/pytest tests/export/test_evaluate.py -q
"""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from tl2edge.cli import main
from tl2edge.export.evaluate import evaluate


def _data_dir(run_dir):
    return json.loads((run_dir / "config.json").read_text())["data_dir"]


def test_fp32_on_the_images_that_define_its_labels_is_perfect(exported, run_dir, tmp_path):
    # The fixture's images are labelled with the model's own confident predictions.
    fp32 = exported.row("fp32").path
    result = evaluate(fp32, _data_dir(run_dir), out=tmp_path / "eval")
    assert result.accuracy == 1.0
    cm = np.asarray(result.metrics["confusion_matrix"])
    assert (cm == np.diag(np.diag(cm))).all() and cm.sum() == result.images
    record = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert record["variant"] == "fp32" and record["accuracy"] == 1.0
    assert Image.open(tmp_path / "eval" / "confusion.png").size[0] > 100


def test_a_subset_of_classes_and_a_lone_onnx_file(exported, run_dir, tmp_path, spec):
    data = tmp_path / "subset"
    shutil.copytree(_data_dir(run_dir), data)
    for extra in sorted(p for p in data.iterdir())[2:]:
        shutil.rmtree(extra)
    lone = tmp_path / "lone.onnx"
    shutil.copy(exported.row("int8").path / "model.onnx", lone)  # labels from the metadata
    result = evaluate(lone, data)
    assert result.images == 2 * len(list((data / spec.labels[0]).iterdir()))
    supports = {k: v["support"] for k, v in result.metrics["per_class"].items()}
    assert sum(supports.values()) == result.images and set(result.labels) == set(spec.labels)


def test_bad_inputs_exit_2_with_a_reason(exported, run_dir, tmp_path, capsys):
    fp32 = str(exported.row("fp32").path)
    data = tmp_path / "wrong"
    shutil.copytree(_data_dir(run_dir), data)
    first = sorted(data.iterdir())[0]
    first.rename(data / "giraffe")
    assert main(["evaluate", fp32, str(data)]) == 2
    assert "giraffe" in capsys.readouterr().err
    (data / "giraffe").rename(first)
    (first / "broken.png").write_bytes(b"\x89PNG broken")
    assert main(["evaluate", fp32, str(data)]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["evaluate", fp32, str(data), "--skip-bad-images"]) == 0
    assert "1 unreadable image(s) skipped" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "missing.onnx"), str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_every_available_provider_with_agreement_against_fp32(
    exported, run_dir, tmp_path, capsys, spec
):
    from tl2edge.export.bench import make_session, predict
    from tl2edge.images import decode_rgb, scan_image_folder
    from tl2edge.serve.providers import CPU, auto_candidates

    fp32, int8 = exported.row("fp32").path, exported.row("int8").path
    same = evaluate(fp32, _data_dir(run_dir), device="all", reference=fp32)
    assert same.providers[CPU]["agreement"] == 1.0 and same.providers[CPU]["max_abs_diff"] == 0
    assert len(same.providers) == len(auto_candidates())  # one row per available provider
    out = tmp_path / "eval"
    code = main(
        ["evaluate", str(int8), _data_dir(run_dir), "--device", "all", "--reference", str(fp32),
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert "agreement: top-1 agreement with" in capsys.readouterr().out
    record = json.loads((out / "evaluation.json").read_text())["providers"][CPU]
    folder = scan_image_folder(_data_dir(run_dir), what="data", min_classes=1)
    x = np.stack([decode_rgb(p, (spec.size, spec.size)) for p, _ in folder.files])
    expect = (
        predict(make_session(fp32 / "model.onnx"), x).argmax(1)
        == predict(make_session(int8 / "model.onnx"), x).argmax(1)
    ).mean()
    assert record["agreement"] == expect and record["device"] == "cpu"
