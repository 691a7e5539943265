"""The seed architectures (LeNet ... DenseNet) and NiN's head ablation: their structure, their
smallest inputs, and their new op types (FC heads, Add, Concatenate) through QAT to a fully int8 model."""

import numpy as np
import pytest

from pipeline.models import zoo
from pipeline.models.nin import ARCHS, ModelConfig, build_model, count_macs, has_class_maps

SEEDS = list(zoo.SEEDS)
FC_HEADED = {"lenet": 3, "alexnet": 3, "vgg11": 3, "vgg16": 3}  # Dense layers: the originals' FC heads


def _layers_of(model, kind: str) -> list:
    return [layer for layer in model.layers if type(layer).__name__ == kind]


@pytest.mark.parametrize("arch", SEEDS)
def test_each_seed_architecture_builds_at_its_smallest_input_and_refuses_below(arch):
    info = ARCHS[arch]
    size = info.min_input_size
    m = build_model(ModelConfig(arch=arch, num_classes=7, input_shape=(size, size, 3), width=0.125))
    assert m.output_shape == (None, 7) and m.layers[-1].name == "scores"
    assert len(_layers_of(m, "Dense")) == FC_HEADED.get(arch, 1)  # FC heads stay where the original has them
    if arch not in FC_HEADED:
        assert _layers_of(m, "GlobalAveragePooling2D")
    for layer in _layers_of(m, "Conv2D"):  # Conv -> BN -> ReLU everywhere: QAT folds every BatchNorm
        following = {type(n.outbound_layer).__name__ for n in layer._outbound_nodes}
        assert following == {"BatchNormalization"}, layer.name
        assert layer.activation.__name__ == "linear" and not layer.use_bias
    assert not has_class_maps(ModelConfig(arch=arch))  # no per-class maps: no heatmap
    with pytest.raises(ValueError, match=f"at least {size}x{size}"):
        build_model(ModelConfig(arch=arch, input_shape=(size - 1, size - 1, 3)))
    assert info.changes  # what differs from the original is said (describe, README)


def test_the_sizes_match_the_originals():
    """Parameter counts at width 1 against the published ones (BatchNorm adds a little)."""
    def params(arch, size, classes=10):
        return build_model(ModelConfig(arch=arch, num_classes=classes, input_shape=(size, size, 3), width=1.0)).count_params()

    assert 0.27e6 <= params("resnet20", 32) <= 0.28e6  # He et al. 2016, table 6: 0.27M
    # (global average pooling: the same parameters at any input size, so the smallest, 32, is built)
    assert 11.1e6 <= params("resnet18", 32) <= 11.3e6  # d2l.ai: ~11.2M (10 classes)
    assert 5.9e6 <= params("googlenet", 32) <= 6.1e6  # d2l.ai: ~6M
    assert 0.75e6 <= params("densenet", 32) <= 0.77e6  # d2l.ai: ~0.76M
    lenet = build_model(ModelConfig(arch="lenet", input_shape=(28, 28, 1), width=1.0))
    assert [layer.units for layer in _layers_of(lenet, "Dense")] == [120, 84, 10]
    assert _layers_of(lenet, "Conv2D")[1].output_shape[1:] == (10, 10, 16)  # LeNet-5's C3
    vgg = build_model(ModelConfig(arch="vgg11", input_shape=(32, 32, 3), width=1.0))
    assert [layer.filters for layer in _layers_of(vgg, "Conv2D")] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert len(_layers_of(build_model(ModelConfig(arch="vgg16", width=0.125)), "Conv2D")) == 13
    alexnet = build_model(ModelConfig(arch="alexnet", input_shape=(224, 224, 3), width=0.125))
    assert _layers_of(alexnet, "Conv2D")[0].output_shape[1:3] == (54, 54)  # 11x11/4 on 224
    googlenet = build_model(ModelConfig(arch="googlenet", input_shape=(32, 32, 3), width=1.0))
    assert len(_layers_of(googlenet, "Concatenate")) == 9  # 3a ... 5b
    assert googlenet.get_layer("inception3a_concat").output_shape[-1] == 64 + 128 + 32 + 32


def test_nin_head_ablation():
    """--head gap|fc|fc-dropout (paper 4.6): the same body; FC adds the only Dense layer, and only
    GAP keeps the per-class maps (a heatmap)."""
    models = {h: build_model(ModelConfig(head=h, width=0.25)) for h in ("gap", "fc", "fc-dropout")}
    assert not _layers_of(models["gap"], "Dense")
    dense = _layers_of(models["fc"], "Dense")
    assert len(dense) == 1 and dense[0].kernel.shape == (8 * 8 * 10, 10)  # the 8x8x10 class maps, flattened
    assert models["fc"].count_params() == models["gap"].count_params() + 640 * 10 + 10
    assert [layer.name for layer in _layers_of(models["fc-dropout"], "Dropout")][-1] == "fc_drop"
    assert has_class_maps(ModelConfig(head="gap")) and not has_class_maps(ModelConfig(head="fc"))
    assert count_macs(models["fc"]) == count_macs(models["gap"]) + 640 * 10
    with pytest.raises(ValueError, match="--head fc"):
        build_model(ModelConfig(arch="resnet20", head="fc"))


def test_add_concatenate_and_fc_layers_quantise_to_a_fully_int8_model(tmp_path):
    """The op types the seed architectures add to NiN's — Add (ResNet), Concatenate (GoogLeNet,
    DenseNet, with DenseNet's transition between two), FC layers (LeNet, AlexNet, VGG) — through tfmot's
    QAT wrappers, range calibration and the int8 converter: every op between the input and the softmax
    runs on int8 tensors."""
    import tf_keras as keras

    from edge_app.runtime import Classifier, load_interpreter
    from pipeline.models.layers import conv_bn_relu, fc_classifier
    from pipeline.export.convert import calibrate_qat_ranges, quantize, to_tflite_int8

    cfg = ModelConfig(num_classes=5, width=0.125)
    inputs = keras.Input((16, 16, 3), name="image")
    x = conv_bn_relu(inputs, 8, 3, "conv", cfg)
    x = zoo.residual(x, 16, "res", cfg, strides=2)
    x = zoo.inception(x, 8, (8, 8), (4, 4), 4, "inc", cfg)
    x = keras.layers.Concatenate(name="dense_concat")([x, conv_bn_relu(x, 8, 3, "grow", cfg)])
    # a DenseNet transition as zoo.densenet has it (pool, then 1x1 conv) before the next dense block's
    # concatenation: with a pooling output fed straight into it, the converter refused the calibrated
    # model ("average_pool_2d op quantization parameters violate the same scale constraint")
    x = conv_bn_relu(keras.layers.AveragePooling2D(2, name="transition_pool")(x), 16, 1, "transition", cfg)
    x = keras.layers.Concatenate(name="dense2_concat")([x, conv_bn_relu(x, 8, 3, "grow2", cfg)])
    model = keras.Model(inputs, fc_classifier(x, cfg, hidden=(16,), dropout=0.5))
    qat = quantize(model)
    rep = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    calibrate_qat_ranges(qat, model, rep)  # as the build does: each range its own, not all [-6, 6]
    path = tmp_path / "m.tflite"
    path.write_bytes(to_tflite_int8(qat, rep))
    interp, _ = load_interpreter(path, num_threads=1)
    ops = interp._get_ops_details()
    names = {o["op_name"] for o in ops}
    assert {"ADD", "CONCATENATION", "FULLY_CONNECTED", "CONV_2D"} <= names and "DEQUANTIZE" not in names
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    for o in ops:
        if o["op_name"] in ("ADD", "CONCATENATION", "FULLY_CONNECTED", "CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D"):
            assert np.dtype(tensors[o["outputs"][0]]["dtype"]) == np.int8, o["op_name"]
    scores = Classifier(path, num_threads=1).predict(rep[0])
    assert scores.shape == (5,) and abs(float(scores.sum()) - 1.0) < 0.05


def test_a_seed_architecture_has_no_class_maps_to_ask_for(tmp_path):
    from pipeline.runs.config import BuildRequest
    from pipeline.errors import RunError

    cfg = BuildRequest(dataset="cifar10", arch="resnet20").config()
    assert cfg.convert.class_maps is False and cfg.model.head == "gap"
    assert BuildRequest(dataset="cifar10", arch="nin-cifar").config().convert.class_maps is True
    assert BuildRequest(dataset="cifar10", arch="nin-cifar", overrides={"head": "fc"}).config().convert.class_maps is False
    with pytest.raises(RunError, match="no per-class maps"):
        BuildRequest(dataset="cifar10", arch="lenet", class_maps=True).config()
    with pytest.raises(RunError, match="--head fc"):
        BuildRequest(dataset="cifar10", arch="densenet", overrides={"head": "fc"}).config()


def test_a_seed_architecture_goes_through_the_unchanged_path(lenet_sweep, cifar_jpg, tmp_path):
    """LeNet (FC head, no class maps; a candidate of conftest.lenet_sweep) through float training, QAT,
    int8 conversion, the report, the Edge TPU check, the bundle and edge-app: the sidecar has no
    class_maps output, so --heatmap is refused with one clear line."""
    import json
    import shutil
    import tarfile

    from click.testing import CliRunner

    from edge_app.cli.main import cli as edge_cli

    root = tmp_path / "run"  # a copy: the Edge TPU check writes edgetpu.json into the folder
    shutil.copytree(lenet_sweep[0] / "lenet-w0.25", root, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    sidecar = json.loads((root / "model.json").read_text())
    assert [o["name"] for o in sidecar["outputs"]] == ["scores"] and sidecar["arch"] == "lenet"
    report = json.loads((root / "report.json").read_text())
    assert {"float_keras", "qat_int8", "ptq_int8"} <= set(report["variants"])
    image = tmp_path / "cat.jpg"
    with tarfile.open(cifar_jpg) as tar:
        member = next(m for m in tar if m.isfile() and m.name.endswith(".jpg"))
        image.write_bytes(tar.extractfile(member).read())
    ok = CliRunner().invoke(edge_cli, ["run", str(root), "--source", str(image), "--max-frames", "1"])
    assert ok.exit_code == 0, ok.output
    from pipeline.cli.main import cli as pipeline_cli

    check = CliRunner().invoke(pipeline_cli, ["edgetpu", "check", str(root)])
    assert check.exit_code == 0 and "FULLY_CONNECTED" in check.output, check.output
    bundle = CliRunner().invoke(pipeline_cli, ["package", str(root), "--out", str(tmp_path / "dist")])
    assert bundle.exit_code == 0 and len(list((tmp_path / "dist").glob("*.tar.gz"))) == 1, bundle.output
    refused = CliRunner().invoke(edge_cli, ["run", str(root), "--source", str(image), "--heatmap"])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "is a lenet: it has no per-class maps" in refused.output and "leave out --heatmap" in refused.output

