"""Conversion: full-int8 I/O, quantisation parameters, static batch-1 shapes, and the
device-side quantisation maths checked against the float model."""

import numpy as np
import pytest

from edge_app.runtime import Classifier, dequantize, load_interpreter, quantize


@pytest.fixture(scope="module")
def tiny(fast_run, fast_tree):
    """The fast run's models: its float Keras model (1 epoch on a synthetic tree, so BatchNorm and the
    QAT ranges have moved from their initial values) and its three .tflite conversions, with images
    of the data they were calibrated on (quantisation ranges hold for that data, not for noise)."""
    import tf_keras as keras

    from pipeline.data.formats import load_raw

    model = keras.models.load_model(fast_run / "model_float.keras", compile=False)
    images = load_raw("folder", fast_tree).x_train[:64]
    paths = {"float": fast_run / "model_float32.tflite", "qat": fast_run / "model_int8.tflite",
             "ptq": fast_run / "model_int8_ptq.tflite"}
    return model, images, paths


def _scores_output(interp) -> dict:
    """The [1, classes] output (the class maps [1, H, W, classes] may come first)."""
    (scores,) = [d for d in interp.get_output_details() if len(d["shape"]) == 2]
    return scores


def test_int8_models_have_int8_io_and_sane_quantisation(tiny):
    _, _, paths = tiny
    for key in ("qat", "ptq"):
        interp, _ = load_interpreter(paths[key], num_threads=1)
        i, o = interp.get_input_details()[0], _scores_output(interp)
        assert i["dtype"] == np.int8 and o["dtype"] == np.int8
        assert list(i["shape"]) == [1, 32, 32, 3]  # static batch of 1, for edge runtimes
        scale, zp = i["quantization"]
        assert abs(scale - 1 / 255) < 2e-5 and zp == -128  # [0, 1] inputs: q = pixel - 128
        assert o["quantization"] == pytest.approx((1 / 256, -128))  # softmax output range [0, 1)
        # every tensor between input and output is integer: fully int8, nothing left in float
        kinds = {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
        assert "float32" not in kinds, kinds


def test_int8_bytes_are_a_fraction_of_float(tiny):
    paths = tiny[2]
    assert paths["qat"].stat().st_size < 0.6 * paths["float"].stat().st_size


def test_device_maths_matches_the_float_model(tiny):
    model, images, paths = tiny
    want = model.predict(images[:16] / 255.0, verbose=0)
    for key, tol in (("float", 1e-4), ("ptq", 0.06)):
        got = Classifier(paths[key], num_threads=1).predict_batch(images[:16])
        assert np.abs(got - want).max() < tol, key
        assert np.allclose(got.sum(axis=1), 1.0, atol=0.05)


def test_quantise_dequantise_maths():
    x = np.array([0.0, 128 / 255, 1.0, 2.0, -1.0], np.float32)
    q = quantize(x, 1 / 255, -128, np.int8)
    assert q.dtype == np.int8 and list(q) == [-128, 0, 127, 127, -128]  # saturates, never wraps
    np.testing.assert_allclose(dequantize(np.array([127, -128], np.int8), 1 / 256, -128), [255 / 256, 0.0])


def test_qat_ranges_are_calibrated_not_left_at_tfmot_defaults(tiny):
    import tf_keras as keras

    from pipeline.export.convert import calibrate_qat_ranges, freeze_batch_norm
    from pipeline.export.convert import quantize as qat_wrap

    model = keras.models.clone_model(tiny[0])  # freeze_batch_norm changes the model: not the shared one
    model.set_weights(tiny[0].get_weights())
    images = tiny[1]
    assert freeze_batch_norm(model) == 9  # nin-cifar: one BatchNorm per convolution
    q = qat_wrap(model)
    ranges = calibrate_qat_ranges(q, model, images)
    (in_layer,) = [k for k in ranges if k.startswith("quantize_layer")]
    assert ranges[in_layer] == pytest.approx((0.0, 1.0), abs=0.02)  # pixels / 255
    relu = {k: v for k, v in ranges.items() if k.endswith("_relu")}
    assert len(relu) == 9 and all(lo == 0.0 and 0 < hi != 6.0 for lo, hi in relu.values())
    # the variables really hold the measured ranges
    var = {v.name: float(v.numpy()) for v in q.get_layer("quant_block1_1_relu").non_trainable_weights if v.shape == ()}
    assert var["quant_block1_1_relu/output_max:0"] == pytest.approx(relu["quant_block1_1_relu"][1])
    # calibrated and untrained, the fake-quantised model tracks the float one more closely
    # than with tfmot's starting ranges
    x = images / 255.0
    want = model.predict(x, verbose=0)
    err_calibrated = np.abs(q.predict(x, verbose=0) - want).mean()
    err_default = np.abs(qat_wrap(model).predict(x, verbose=0) - want).mean()
    assert err_calibrated < err_default
