"""The bad-input matrix: every case ends in one clear `Error:` line and a non-zero exit, with no
traceback, and changes nothing on disk. Add a row for every case found."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from edge_app.cli.main import cli as edge_cli
from pipeline.cli.main import cli as pipeline_cli


def _files(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


PIPELINE = [
    ["build", "--dataset", "imagenet"],
    ["build", "--width", "-1"],
    ["build", "--epochs", "0"],
    ["build", "--profile", "slow"],
    ["build", "--io-type", "fp16"],
    ["build", "--label-smoothing", "0.9"],
    ["build", "--qat-lr", "0"],
    ["build", "--qat-distill", "2"],
    ["build", "--workers", "not-an-address"],
    ["build", "--worker-index", "1"],
    ["build", "--target", "edgetpu", "--io-type", "int8"],
    ["build", "--data-dir", "nope"],
    ["build", "--resume"],
    ["convert", "not-a-run"],
    ["qat", "."],
    ["report", "."],
    ["evaluate", "missing.tflite"],
    ["evaluate", "junk.tflite"],
    ["evaluate", "model.onnx"],
    ["compare", "."],
    ["describe", "--arch", "vgg"],
    ["describe", "--arch", "nin-imagenet", "--input-size", "32"],
]
EDGE = [
    ["run"],
    ["run", "--model", "missing"],
    ["run", "--model", "junk.tflite", "--source", "."],
    ["run", "--model", "junk.tflite", "--threads", "0"],
    ["run", "--model", "junk.tflite", "--resize", "zoom"],
    ["run", "--model", "junk.tflite", "--top-k", "0"],
    ["run", "--model", "junk.tflite", "--delegate", "tpu"],
    ["run", "--model", "junk.tflite", "--serve", "abc"],
    ["run", "--model", "junk.tflite", "--labels", "missing.txt"],
    ["info", "missing"],
    ["info", "junk.tflite"],
    ["bench", "--model", "junk.tflite", "--runs", "1"],
]


@pytest.mark.parametrize("cli, args", [(pipeline_cli, a) for a in PIPELINE] + [(edge_cli, a) for a in EDGE],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_input_is_one_clear_line(cli, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NIN_DATA_DIR", raising=False)
    monkeypatch.setenv("TF_CONFIG", "")  # the command may write it; monkeypatch restores it
    (tmp_path / "junk.tflite").write_bytes(b"\x00" * 64)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    before = _files(tmp_path)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code not in (0, None), res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, (AssertionError, AttributeError, KeyError))
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and len(errors[0]) > len("Error: ") + 10, res.output
    assert _files(tmp_path) == before, "the failed command changed files"
    assert os.getcwd() == str(tmp_path)
