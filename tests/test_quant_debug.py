"""Per-layer int8 error (pipeline.export.quant_debug): a tiny model with one layer made to quantise badly."""

import numpy as np
import pytest

from pipeline.export.quant_debug import ROUNDING_RMSE_STEPS, _layer_of, layer_errors, worst_first


def _model(poison: bool):
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((8, 8, 3))
    h = L.ReLU(name="relu")(L.Conv2D(8, 3, padding="same", name="conv")(inp))
    h = L.ReLU(name="relu2")(L.Conv2D(8, 1, name="conv2")(h))
    m = keras.Model(inp, L.Dense(10, name="dense")(L.GlobalAveragePooling2D(name="gap")(h)))
    w, b = m.get_layer("conv").get_weights()
    w[..., 7], b[7] = 0.0, -1.0  # channel 7 of the first block is always 0 after the ReLU
    m.get_layer("conv").set_weights([w, b])
    if poison:
        # a weight of 1000 from that dead channel changes nothing in float, but stretches every
        # output channel's int8 weight step so far that its other weights round to 0
        w, b = m.get_layer("conv2").get_weights()
        w[0, 0, 7, :] = 1000.0
        m.get_layer("conv2").set_weights([w, b])
    return m


IMAGES = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("variant", ["ptq", "qat"])
def test_the_badly_quantised_layer_comes_first(variant):
    from pipeline.export.convert import calibrate_qat_ranges, quantize, to_tflite_int8

    rows = {}
    for poison in (False, True):
        m = _model(poison)
        if variant == "qat":
            q = quantize(m)
            calibrate_qat_ranges(q, m, IMAGES)
            m = q
        rows[poison] = layer_errors(to_tflite_int8(m, IMAGES), m, IMAGES)
    prefix = "quant_" if variant == "qat" else ""
    clean, bad = rows[False], worst_first(rows[True])
    assert {r.layer for r in clean} >= {f"{prefix}relu", f"{prefix}relu2"}
    # healthy: about one rounding step, noise a few percent of the signal at most
    assert all(r.rmse_steps < 4 * ROUNDING_RMSE_STEPS and r.nsr < 0.05 for r in clean), clean
    assert bad[0].layer == f"{prefix}relu2" and bad[0].added_nsr > 0.3 and bad[0].rmse_steps > 5, bad
    first = next(r for r in bad if r.layer == f"{prefix}relu")
    assert first.nsr < 0.05  # the layer before the bad one is still fine


def test_tensor_names_map_to_layers():
    names = {"block1_relu1", "conv", "quant_conv"}
    assert _layer_of("model/quant_block1_relu1/Relu;model/quant_block1_bn1/FusedBatchNormV3", names) == "block1_relu1"
    assert _layer_of("model/quant_conv/BiasAdd", names) == "quant_conv"  # an exact name wins over the stripped one
    assert _layer_of("model/other/Relu", names) is None
