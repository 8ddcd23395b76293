"""Every bad input of `tl2edge export` gives exit 2, a message with the values, and no writes.
Run: .venv/bin/pytest tests/export -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tl2edge.cli import main


def _export(capsys, *argv: str) -> tuple[int, str]:
    code = main(["export", *argv])
    return code, capsys.readouterr().err


def _repo_args(repo: Path) -> list[str]:
    return ["--repository", str(repo), "--name", "m", "--bench-seconds", "0.05"]


@pytest.fixture
def repo(tmp_path) -> Path:
    return tmp_path / "repo"


def _nothing_written(repo: Path) -> bool:
    return not repo.exists()  # the export would have created it


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--opset", "12"], "--opset 12 is outside the supported range 13-18"),
        (["--opset", "19"], "--opset 19 is outside the supported range 13-18"),
        (["--variants", "fp32,int4"], "unknown variant(s) 'int4' in --variants"),
        (["--variants", "int8"], "--variants must include fp32"),
        (["--variants", ","], "--variants is empty"),
        (["--calibration-method", "kl"], "--calibration-method must be one of minmax"),
        (["--quantization", "dynamic"], "--quantization must be one of auto"),
        (["--calibration-samples", "0"], "--calibration-samples must be at least 1"),
        (["--max-accuracy-drop", "-1"], "--max-accuracy-drop is in percentage points"),
        (["--version", "0"], "--version must be a positive integer"),
    ],
)
def test_bad_options(run_dir, repo, capsys, argv, message):
    code, err = _export(capsys, str(run_dir), *_repo_args(repo), *argv)
    assert code == 2
    assert message in err
    assert _nothing_written(repo)


def test_run_dir_missing(tmp_path, repo, capsys):
    code, err = _export(capsys, str(tmp_path / "nope"), *_repo_args(repo))
    assert code == 2 and f"run dir {tmp_path / 'nope'} does not exist" in err


def test_not_a_run_dir(tmp_path, repo, capsys):
    (tmp_path / "folder").mkdir()
    code, err = _export(capsys, str(tmp_path / "folder"), *_repo_args(repo))
    assert code == 2
    assert "is not a tl2edge run dir: missing model.keras, labels.json, config.json" in err


def test_unfinished_run(run_dir, tmp_path, repo, capsys):
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "state.json").write_text(json.dumps({"status": "interrupted"}))
    code, err = _export(capsys, str(run), *_repo_args(repo))
    assert code == 2 and "is not complete (status 'interrupted')" in err and "--resume" in err


def test_run_whose_data_dir_is_gone(run_dir, tmp_path, repo, capsys):
    run = shutil.copytree(run_dir, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(tmp_path / "gone")}))
    code, err = _export(capsys, str(run), *_repo_args(repo))
    assert code == 2 and f"the run's data dir {tmp_path / 'gone'}" in err
    assert "validation images" in err
    assert _nothing_written(repo)


def test_corrupt_model_file(run_dir, tmp_path, repo, capsys):
    run = shutil.copytree(run_dir, tmp_path / "run")
    data = (run / "model.keras").read_bytes()
    (run / "model.keras").write_bytes(data[: len(data) // 3])
    code, err = _export(capsys, str(run), *_repo_args(repo))
    assert code == 2 and "model.keras could not be loaded" in err and "corrupt" in err
    assert _nothing_written(repo)


def test_calibration_dir_empty(run_dir, tmp_path, repo, capsys):
    (tmp_path / "calib" / "sub").mkdir(parents=True)
    (tmp_path / "calib" / "notes.txt").write_text("no images here")
    code, err = _export(
        capsys, str(run_dir), *_repo_args(repo), "--calibration-dir", str(tmp_path / "calib")
    )
    assert code == 2 and f"--calibration-dir {tmp_path / 'calib'} has no images" in err
    assert _nothing_written(repo)


def test_calibration_dir_with_unreadable_images(run_dir, tmp_path, repo, capsys):
    calib = tmp_path / "calib"
    calib.mkdir()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(calib / "good.png")
    (calib / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, err = _export(capsys, str(run_dir), *_repo_args(repo), "--calibration-dir", str(calib))
    assert code == 2
    assert "1 of 2 image(s) could not be read" in err and "broken.jpg" in err
    assert _nothing_written(repo)


def test_existing_version_is_not_overwritten(exported, run_dir, capsys):
    repo = exported.repository
    before = (repo / "shapes-fp32" / "1" / "manifest.json").read_text()
    code, err = _export(
        capsys,
        str(run_dir),
        "--repository",
        str(repo),
        "--name",
        "shapes",
        "--version",
        "1",
    )
    assert code == 2
    assert "shapes-fp32/1, " in err and "shapes-int8/1 already exist(s); pass --overwrite" in err
    assert "the next free one is 2" in err
    assert (repo / "shapes-fp32" / "1" / "manifest.json").read_text() == before


def test_int8_accuracy_gate_fails_with_numbers_and_advice(run_dir, tmp_path, repo, capsys, spec):
    # Calibrating on black images leaves no range for real pixels: int8 predictions collapse.
    calib = tmp_path / "black"
    calib.mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((spec.size, spec.size, 3), np.uint8)).save(calib / f"{i}.png")
    code, err = _export(
        capsys,
        str(run_dir),
        *_repo_args(repo),
        "--calibration-dir",
        str(calib),
        "--quantization",
        "u8s8",
        "--max-accuracy-drop",
        "5",
    )
    assert code == 2
    assert "int8 loses" in err and "(> --max-accuracy-drop 5)" in err
    assert "vs fp32 100.00%" in err and "agreement with fp32" in err
    assert "Try more calibration images" in err
    assert _nothing_written(repo)


def test_parity_gate_fails_when_the_conversion_is_wrong(run_dir, repo, capsys, monkeypatch):
    from tl2edge.export import onnx as onnx_step

    real = onnx_step.convert_keras

    def wrong_conversion(model, *, opset):
        import keras

        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        kernel, bias = clone.get_layer("probs").get_weights()
        clone.get_layer("probs").set_weights(
            [kernel, bias + np.arange(len(bias), dtype=bias.dtype)]
        )
        return real(clone, opset=opset)

    monkeypatch.setattr(onnx_step, "convert_keras", wrong_conversion)
    code, err = _export(capsys, str(run_dir), *_repo_args(repo), "--variants", "fp32")
    assert code == 2
    assert "fp32 ONNX differs from the Keras model: max |probs difference| =" in err
    assert "> 0.0001" in err
    assert _nothing_written(repo)


def test_repository_that_is_a_file(run_dir, tmp_path, capsys):
    (tmp_path / "repo").write_text("not a folder")
    code, err = _export(capsys, str(run_dir), *_repo_args(tmp_path / "repo"))
    assert code == 2 and "exists and is not a folder" in err


def test_success_prints_the_table_and_the_next_command(run_dir, repo, capsys):
    code = main(["export", str(run_dir), *_repo_args(repo), "--variants", "fp32"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| fp32 | m-fp32/1 |" in out
    assert out.rstrip().endswith(f"tl2edge serve --repository {repo}")


def test_help_is_light():
    import subprocess
    import sys

    code = (
        "import sys\nfrom tl2edge.cli import main\n"
        "try:\n    main(['export', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('tensorflow', 'keras', 'tf2onnx', 'onnxruntime', 'onnx')\n"
        "print('HEAVY:' + ','.join(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--calibration-method" in out.stdout and "u8s8-reduce-range" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:"
