"""The preprocessing self-check: `edge-app check-input` and the run loop's check at start."""

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import png_bytes

from edge_app.cli.main import cli
from edge_app.checks.inputcheck import findings, measure
from edge_app.contract.sidecar import read_sidecar, write_sidecar

WARM = (170, 120, 70)  # the training images' mean colour (RGB) in these tests: a clear colour cast


def _images(n, mean, spread=30.0, size=(40, 48), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(mean, spread, (n, *size, 3)), 0, 255).astype(np.uint8)


def _trained(mean=WARM):
    px = _images(64, mean, size=(32, 32), seed=1)
    return measure(px, px / 255.0)


def _folder(root, images):
    root.mkdir(parents=True)
    for i, img in enumerate(images):
        (root / f"{i}.png").write_bytes(png_bytes(img))
    return root


def _kinds(live, trained, saturated=0.0):
    return [f.kind for f in findings(live, trained, saturated)]


@pytest.mark.parametrize("mean, kinds", [
    (WARM, []),
    (WARM[::-1], ["channel_order"]),  # BGR fed to an RGB model
    ((20, 14, 8), ["dark"]),
    ((250, 248, 245), ["overexposed"]),
])
def test_the_rules_on_pixels(mean, kinds):
    px = _images(8, mean, seed=2)
    assert _kinds(measure(px, px / 255.0), _trained()) == kinds


def test_scale_flat_and_saturated_rules():
    px = _images(8, WARM, seed=2)
    assert _kinds(measure(px, px.astype(np.float32)), _trained()) == ["scale"]  # 0..255 where training had 0..1
    assert _kinds(measure(px, px / 255.0), _trained(), saturated=0.9) == ["saturated"]
    flat = np.broadcast_to(np.array(WARM, np.uint8), px.shape)
    assert _kinds(measure(flat, flat / 255.0), _trained()) == ["flat"]
    # pixels scaled to 0..1 before they reach the loop (a float image saved as uint8): a scale finding
    tiny = (px / 255.0).round().astype(np.uint8)
    assert "scale" in _kinds(measure(tiny, tiny / 255.0), _trained())
    # a cast that reversing does not explain is not called a swap (a greenish scene)
    green = _images(8, (100, 180, 90), seed=2)
    assert "channel_order" not in _kinds(measure(green, green / 255.0), _trained())
    # without training statistics only the rules that need none run
    dark = _images(8, (10, 10, 10), seed=2)
    assert _kinds(measure(dark, dark / 255.0), None) == ["dark"]
    assert _kinds(measure(px, px / 255.0), None) == []


@pytest.fixture
def warm_model(edge_model_copy):
    """The edge model whose model.json says its training images had a warm colour cast."""
    sc = read_sidecar(edge_model_copy)
    write_sidecar(edge_model_copy / "model.json", dataclasses.replace(sc, input_stats=_trained()))
    return edge_model_copy


def _check(model, source, *extra):
    return CliRunner().invoke(cli, ["check-input", str(model), "--source", str(source), "--frames", "3", *extra])


def test_check_input_passes_frames_like_training_and_saves_the_models_input(warm_model, tmp_path):
    src = _folder(tmp_path / "cam", _images(5, WARM, seed=3))
    res = _check(warm_model, src)
    assert res.exit_code == 0, res.output
    assert "OK: the frames reach the model as the training images did" in res.output
    out = warm_model / "check-input"
    r = json.loads((out / "check-input.json").read_text())
    assert r["frames"] == 3 and r["findings"] == [] and r["training"]["images"] == 64
    assert sorted(p.name for p in out.glob("*_*")) == [f"{k}_{i}.{e}" for k, e in (("frame", "jpg"), ("input", "png"))
                                                       for i in range(3)]
    import cv2

    pic = cv2.imread(str(out / "input_0.png"))  # the 32x32 input drawn in blocks, red where the model's R is
    assert pic.shape == (256, 256, 3)
    assert pic[..., 2].mean() > pic[..., 0].mean() + 60  # warm: more red than blue, as the model sees it


def test_check_input_names_swapped_channels_dark_frames_and_a_wrong_scale(warm_model, tmp_path):
    res = _check(warm_model, _folder(tmp_path / "bgr", _images(3, WARM[::-1], seed=4)), "--out", str(tmp_path / "o1"))
    assert res.exit_code == 3, res.output
    assert "PROBLEM (channel_order): the channels look swapped" in res.output and "cvtColor" in res.output
    res = _check(warm_model, _folder(tmp_path / "dark", _images(3, (12, 9, 6), spread=4, seed=5)), "--out", str(tmp_path / "o2"))
    assert res.exit_code == 3 and "PROBLEM (dark)" in res.output, res.output
    # a model.json that scales pixels to 0..255 for a model trained (and quantised) on 0..1: an int8 input
    # cannot hold 0..255, so it shows as a tensor pinned at 127 (the scale rule is for float inputs)
    d = json.loads((warm_model / "model.json").read_text())
    d["input"]["pixel_scale"] = 1.0
    (warm_model / "model.json").write_text(json.dumps(d))
    res = _check(warm_model, tmp_path / "bgr", "--out", str(tmp_path / "o3"))
    assert res.exit_code == 3 and "PROBLEM (saturated): 100% of the int8 input" in res.output, res.output


def test_check_input_without_training_statistics_or_frames(edge_model_copy, tmp_path):
    d = json.loads((edge_model_copy / "model.json").read_text())
    d.pop("input_stats", None)
    (edge_model_copy / "model.json").write_text(json.dumps(d))
    res = _check(edge_model_copy, _folder(tmp_path / "cam", _images(2, WARM, seed=6)))
    assert res.exit_code == 0, res.output
    assert "no training statistics" in res.output and "OK as far as scale and exposure go" in res.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"not an image")
    res = _check(edge_model_copy, tmp_path / "bad")
    assert res.exit_code == 1 and "no frame came from" in res.output and "Traceback" not in res.output


def test_the_run_loop_checks_once_at_start_and_says_so_in_the_summary(warm_model, tmp_path, caplog):
    src = _folder(tmp_path / "dark", _images(12, (12, 9, 6), spread=4, seed=7))
    summary = tmp_path / "summary.json"
    res = CliRunner().invoke(cli, ["run", str(warm_model), "--source", str(src), "--threads", "1",
                                   "--summary", str(summary), "--output", str(tmp_path / "lines.jsonl")])
    assert res.exit_code == 0, res.output
    assert json.loads(summary.read_text())["input_check"] == ["dark", "flat"]  # dim and even: both
    warned = [r for r in caplog.records if r.getMessage().startswith("input check:")]
    assert len(warned) == 2 and "very dark" in warned[0].getMessage()  # once (12 frames, judged after 8)
    assert "input check found: dark, flat" in res.output
