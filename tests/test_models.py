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
