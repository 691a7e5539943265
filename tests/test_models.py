import pytest

from pipeline.models.nin import CLASS_MAPS_LAYER, ModelConfig, build_model, count_macs, describe, scaled


def _shape(model, name):
    return tuple(model.get_layer(name).output_shape[1:])


def test_nin_cifar_matches_the_paper():
    m = build_model(ModelConfig(arch="nin-cifar", num_classes=10, input_shape=(32, 32, 3), width=1.0))
    assert m.count_params() == 971_240  # ~0.97M, the paper's CIFAR-10 NiN (+ BatchNorm)
    assert _shape(m, "block1_1_conv") == (32, 32, 192)
    assert _shape(m, "block1_3_conv") == (32, 32, 96)
    assert _shape(m, "pool1") == (16, 16, 96)
    assert _shape(m, "pool2") == (8, 8, 192)
    assert _shape(m, f"{CLASS_MAPS_LAYER}_relu") == (8, 8, 10)  # per-class confidence maps
    assert m.output_shape == (None, 10)
    kinds = {type(layer).__name__ for layer in m.layers}
    assert "Dense" not in kinds and "Flatten" not in kinds  # no fully connected layer
    assert m.get_layer("block1_1_conv").activation.__name__ == "linear"  # Conv -> BN -> ReLU, for QAT folding
    assert count_macs(m) == 222_486_528


def test_nin_imagenet_shapes():
    m = build_model(ModelConfig(arch="nin-imagenet", num_classes=1000, input_shape=(224, 224, 3), dropout=0.5))
    assert _shape(m, "block1_1_conv") == (54, 54, 96)
    assert _shape(m, "pool3") == (5, 5, 384)
    assert _shape(m, f"{CLASS_MAPS_LAYER}_relu") == (5, 5, 1000)
    assert m.output_shape == (None, 1000)


@pytest.mark.parametrize("shape", [(28, 28, 1), (48, 40, 3), (96, 96, 4)])
def test_any_input_size_and_channel_count(shape):
    m = build_model(ModelConfig(input_shape=shape, num_classes=7, width=0.25))
    assert m.input_shape == (None, *shape) and m.output_shape == (None, 7)


def test_width_multiplier_scales_channels():
    m = build_model(ModelConfig(width=0.25))
    assert _shape(m, "block1_1_conv")[-1] == scaled(192, 0.25) == 48
    assert m.count_params() < 971_240 / 10


def test_describe_rows():
    rows = describe(build_model(ModelConfig(width=0.5)))
    assert rows[0]["name"] == "image" and rows[-1]["name"] == "scores"
    assert sum(r["params"] for r in rows) == build_model(ModelConfig(width=0.5)).count_params()


def test_bad_arch_and_tiny_input():
    with pytest.raises(ValueError, match="unknown arch 'resnet'; choose one of nin-cifar, nin-imagenet"):
        build_model(ModelConfig(arch="resnet"))
    with pytest.raises(ValueError, match="at least 67x67"):
        build_model(ModelConfig(arch="nin-imagenet", input_shape=(32, 32, 3)))


@pytest.mark.parametrize("pool2", ["avg", "max", "depthwise"])
def test_pool2_forms_keep_the_shapes_and_the_parameters(pool2):
    m = build_model(ModelConfig(width=0.25, pool2=pool2))
    layer = m.get_layer("pool2")
    assert type(layer).__name__ == {"avg": "AveragePooling2D", "max": "MaxPooling2D", "depthwise": "DepthwiseConv2D"}[pool2]
    assert _shape(m, "pool2") == (8, 8, 48)
    trained = sum(int(w.shape.num_elements()) for w in m.trainable_weights)
    assert trained == 64_132 and m.count_params() == 64_856 + (432 if pool2 == "depthwise" else 0)  # 48 x 3 x 3 fixed weights
    if pool2 == "depthwise":  # the mean of each window: fixed 1/9 weights, never trained
        assert not layer.trainable and (layer.get_weights()[0] == pytest.approx(1 / 9))


def test_the_fixed_depthwise_pool_stays_fixed_under_qat():
    import numpy as np
    import tf_keras as keras

    from pipeline.export.convert import quantize

    qat = quantize(build_model(ModelConfig(width=0.125, pool2="depthwise", dropout=0.0)))
    assert not [w.name for w in qat.trainable_weights if w.name.startswith("pool2/")]
    qat.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32)
    qat.fit(x, np.arange(16) % 10, epochs=1, verbose=0)
    kernel = next(w for w in qat.weights if w.name.startswith("pool2/") and "depthwise_kernel:" in w.name)
    assert np.all(kernel.numpy() == np.float32(1 / 9))


def test_a_qat_model_with_the_fixed_pool_saves_and_loads_its_weights(tmp_path):
    """The run folder's model_qat.weights.h5 round trip (a build once stopped at `convert` on it: Keras re-tracks
    a loaded layer's variables and listed the fixed kernel twice)."""
    import numpy as np

    from pipeline.export.convert import quantize

    cfg = ModelConfig(width=0.125, pool2="depthwise", dropout=0.0)
    a = quantize(build_model(cfg))
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    a(x, training=False)
    a.save_weights(tmp_path / "q.weights.h5")
    b = quantize(build_model(cfg))
    b.load_weights(tmp_path / "q.weights.h5")
    np.testing.assert_array_equal(a(x, training=False).numpy(), b(x, training=False).numpy())
    assert not [w.name for w in b.trainable_weights if w.name.startswith("pool2/")]


def test_pool2_is_nin_cifars_only():
    with pytest.raises(ValueError, match="--pool2 max is not an option of nin-imagenet"):
        build_model(ModelConfig(arch="nin-imagenet", input_shape=(224, 224, 3), pool2="max"))
    with pytest.raises(ValueError, match=r"--pool2 mean is not an option of nin-cifar \(it has avg, max, depthwise\)"):
        build_model(ModelConfig(pool2="mean"))
