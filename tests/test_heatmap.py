"""NiN's class-confidence maps as a second model output, and edge-app --heatmap.

A hand-made NiN-shaped model with known class maps (class 0 fires on red pixels, class 1 on
blue) goes through the pipeline's real export (with_class_maps -> int8 TFLite) and edge_app's
real loop, so "the heatmap highlights where the class is" is checked exactly, for every resize
mode; the tiny trained run checks that the exported maps are the ones the scores come from.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edge_app.cli.main import cli
from edge_app.errors import ModelLoadError
from edge_app.frames.geometry import layout, map_placement
from edge_app.camera.loop import LoopOptions, run_loop
from edge_app.model import LoadedModel
from edge_app.runtime import Classifier
from edge_app.contract.sidecar import read_sidecar
from edge_app.frames.sources import ImageSource

cv2 = pytest.importorskip("cv2")

GREY = (128, 128, 128)
RED, BLUE = (230, 20, 20), (20, 20, 230)


def _colour_model():
    """image -> 1x1 conv (class 0 = red - green - blue, class 1 = blue - red - green) -> ReLU
    = class maps [32, 32, 2] -> GAP -> softmax; named like the registry's NiN layers."""
    import tf_keras as keras

    from pipeline.models.nin import CLASS_MAPS_OUTPUT

    kernel = np.array([[[[16.0, -16.0], [-16.0, -16.0], [-16.0, 16.0]]]], np.float32)  # [1, 1, 3 in, 2 out]
    inp = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(2, 1, name="class_maps_conv", kernel_initializer=keras.initializers.Constant(kernel),
                            bias_initializer=keras.initializers.Constant([-0.5, -0.5]))(inp)
    x = keras.layers.ReLU(name=CLASS_MAPS_OUTPUT)(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, keras.layers.Activation("softmax", name="scores")(x))


def _frame(colour, centre, size=80, shape=(480, 640)):
    f = np.full((*shape, 3), GREY, np.uint8)
    x, y = centre
    f[y - size // 2:y + size // 2, x - size // 2:x + size // 2] = colour
    return f


@pytest.fixture(scope="module")
def colour_tflite(tmp_path_factory):
    from pipeline.export.convert import to_tflite_int8
    from pipeline.models.nin import with_class_maps

    rng = np.random.default_rng(0)
    rep = np.stack([cv2.resize(_frame(RED if i % 2 else BLUE, (int(rng.integers(120, 520)), int(rng.integers(80, 400)))),
                               (32, 32), interpolation=cv2.INTER_AREA) for i in range(32)])
    path = tmp_path_factory.mktemp("heat") / "colour.tflite"
    path.write_bytes(to_tflite_int8(with_class_maps(_colour_model()), rep, "int8"))
    return path


def _loaded(path) -> LoadedModel:
    return LoadedModel(Classifier(path, num_threads=1), ["red", "blue"], None, path, "cpu")


def test_colour_model_exports_two_int8_outputs_found_by_shape(colour_tflite):
    clf = Classifier(colour_tflite, num_threads=1)
    assert clf.has_class_maps and clf.output.shape == (1, 2) and clf.maps_output.shape == (1, 32, 32, 2)
    assert clf.output.dtype == np.int8 and clf.maps_output.dtype == np.int8
    assert np.argmax(clf.predict(cv2.resize(_frame(RED, (320, 240)), (32, 32)))) == 0
    maps = clf.class_maps()
    assert maps.shape == (32, 32, 2) and maps.dtype == np.float32 and maps.min() >= 0


@pytest.mark.parametrize("mode", ["crop", "letterbox", "stretch"])
@pytest.mark.parametrize("colour, index", [(RED, 0), (BLUE, 1)])
@pytest.mark.parametrize("centre", [(160, 100), (480, 380), (320, 240)])
def test_heatmap_peak_is_where_the_class_is(colour_tflite, tmp_path, mode, colour, index, centre):
    (tmp_path / "f.png").write_bytes(cv2.imencode(".png", cv2.cvtColor(_frame(colour, centre), cv2.COLOR_RGB2BGR))[1])
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(cli, ["run", "--model", str(colour_tflite), "--source", str(tmp_path / "f.png"),
                                   "--heatmap", "--resize", mode, "--output", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    line = json.loads(out.read_text())
    assert line["top"][0]["index"] == index and line["heatmap"]["index"] == index
    # one map cell is 15 (crop), 20 (letterbox/stretch, 640 wide) frame pixels: the square is 80
    px, py = line["heatmap"]["peak"]
    assert abs(px - centre[0]) <= 40 and abs(py - centre[1]) <= 40, (mode, line["heatmap"], centre)
    assert line["heatmap"]["value"] > 0


def test_overlay_is_hot_on_the_class_and_cold_elsewhere(colour_tflite, tmp_path):
    """The drawn frame: red (JET's top) over the square, blue elsewhere inside the crop,
    untouched outside the part of the frame the model saw."""
    frame = _frame(RED, (400, 300))
    res_path = tmp_path / "img.png"
    res_path.write_bytes(cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1])
    run_loop(_loaded(colour_tflite), ImageSource([res_path], "img.png"), LoopOptions(heatmap=True, resize="crop"),
             out=None, sink=_Keep())
    bgr = _Keep.last
    b, _, r = (int(v) for v in bgr[300, 400])
    assert r > 150 and b < 60  # hot: JET red blended with the red square
    b, _, r = (int(v) for v in bgr[100, 200])  # grey background, inside the centre crop (x 80..560)
    assert b > r + 30  # cold: JET blue over grey
    assert tuple(bgr[240, 20]) == GREY[::-1]  # outside the crop: the model never saw it, left as it is


class _Keep:
    """A stand-in VideoSink that keeps the last annotated frame."""

    last = None

    def write(self, bgr):
        _Keep.last = bgr.copy()

    def close(self):
        pass


@pytest.mark.parametrize("mode", ["crop", "letterbox", "stretch"])
def test_map_placement_round_trip(mode):
    """Map cell centres land on the frame pixels that fed them, for every resize mode."""
    (fx, fy, fw, fh), (ix, iy, iw, ih) = layout(480, 640, 32, 32, mode)
    p = map_placement((480, 640), (8, 8), 32, 32, mode)
    # cell (0, 0) covers input pixels 0..3 (centre 2.0 in continuous coordinates)
    x, y = p.to_frame(0, 0)
    assert x == round(fx + (2.0 - ix) * fw / iw - 0.5) and y == round(fy + (2.0 - iy) * fh / ih - 0.5)
    if mode == "crop":
        assert p.box == (80, 0, 480, 480) and p.to_frame(7, 7) == (530, 450)


@pytest.mark.slow
def test_trained_maps_are_what_the_scores_average(run_dir):
    """In the real exported model, softmax(mean over the maps) is the scores output: the second
    output is the last block's maps, not some other tensor."""
    from pipeline.runs.config import BuildConfig
    from pipeline.data.splits import make_splits

    sc = read_sidecar(run_dir)
    assert [o.name for o in sc.outputs] == ["scores", "class_maps"]
    assert sc.output("class_maps").shape == (1, 8, 8, 10) and sc.output("class_maps").dtype == "int8"
    images = make_splits(BuildConfig.from_dict(json.loads((run_dir / "config.json").read_text())).data,
                         progress=False).x_test[:100]
    for name, exact in (("model_float32.tflite", True), ("model_int8.tflite", False)):
        clf = Classifier(run_dir / name, num_threads=1)
        agree, diffs = 0, []
        for img in images:
            scores = clf.predict(img)
            logits = clf.class_maps().mean(axis=(0, 1))
            again = np.exp(logits - logits.max())
            again /= again.sum()
            agree += int(np.argmax(again) == np.argmax(scores))
            diffs.append(float(np.abs(again - scores).max()))
        if exact:
            assert max(diffs) < 1e-4, name
        else:
            # int8: maps and scores are each rounded to 256 levels, and the model's own int8 mean
            # saturates at its calibrated range, which a rare image exceeds (measured on 500 test
            # images: median 0.0025, 99th percentile 0.007, one image 0.13)
            assert agree >= 95 and np.median(diffs) < 0.01 and np.percentile(diffs, 90) < 0.02, (name, agree, diffs)


def test_heatmap_on_a_model_without_maps_is_a_clear_error(tmp_path):
    from pipeline.export.convert import to_tflite_int8

    path = tmp_path / "plain.tflite"
    path.write_bytes(to_tflite_int8(_colour_model(), np.zeros((4, 32, 32, 3), np.uint8), "int8"))
    img = tmp_path / "f.png"
    img.write_bytes(cv2.imencode(".png", _frame(RED, (320, 240)))[1])
    res = CliRunner().invoke(cli, ["run", "--model", str(path), "--source", str(img), "--heatmap"])
    assert res.exit_code == 1 and "no class-maps output" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["run", "--model", str(path), "--source", str(img)])
    assert res.exit_code == 0, res.output
    with pytest.raises(ModelLoadError, match="no class-maps output"):
        Classifier(path, num_threads=1).class_maps()
