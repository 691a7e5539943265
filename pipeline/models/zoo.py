"""The seed architectures NiN is compared with: LeNet, AlexNet, VGG, GoogLeNet, ResNet, DenseNet.

Each follows the structure of the articles this project grew from (d2l.ai's chapters on modern
CNNs; ResNet-20 from He et al. 2016, section 4.2), at any input size it can take, with ``width``
scaling every channel count (and the FC layers' units). Where the original's layer does not
quantise or fold, the closest QAT-friendly form is used instead, and :data:`NOTES` says so:

- every convolution is Conv -> BatchNorm -> ReLU (BN folds into the conv at conversion): LeNet's
  sigmoids become ReLUs, AlexNet's local response normalisation becomes BatchNorm, VGG gains
  BatchNorm (VGG-BN), DenseNet's pre-activation BN -> ReLU -> Conv becomes Conv -> BN -> ReLU;
- ResNet shortcuts that change shape are 1x1 conv + BN projections (ResNet-20's paper used
  zero-padding identity shortcuts, "option A", which have no int8 form in TFLite's builtins).

FC heads stay where the original has them (LeNet, AlexNet, VGG): that is the comparison with
NiN's global average pooling. None of these models has per-class maps, so none has a heatmap.
"""

from __future__ import annotations

from typing import Literal

from pipeline.models.layers import ModelConfig, conv_bn_relu, fc_classifier, gap_classifier, keras_module, scaled


def _input(cfg: ModelConfig):
    return keras_module().Input(shape=cfg.input_shape, name="image")


def _model(inputs, outputs, cfg: ModelConfig, name: str):
    return keras_module().Model(inputs, outputs, name=f"{name}_w{cfg.width:g}")


def lenet(cfg: ModelConfig):
    """LeNet-5: 5x5-6 conv, 2x2 average pooling, 5x5-16 conv (valid), pooling, FC 120, FC 84, classes."""
    layers = keras_module().layers
    w = cfg.width
    inputs = _input(cfg)
    x = conv_bn_relu(inputs, scaled(6, w, floor=4), 5, "conv1", cfg)
    x = layers.AveragePooling2D(2, strides=2, name="pool1")(x)
    x = conv_bn_relu(x, scaled(16, w, floor=4), 5, "conv2", cfg, padding="valid")
    x = layers.AveragePooling2D(2, strides=2, name="pool2")(x)
    return _model(inputs, fc_classifier(x, cfg, hidden=(scaled(120, w), scaled(84, w))), cfg, "lenet")


def alexnet(cfg: ModelConfig):
    """AlexNet (one-GPU form): 11x11/4-96, 3x3/2 max pool, 5x5-256, pool, 3x3-384, 3x3-384, 3x3-256, pool,
    FC 4096, dropout, FC 4096, dropout, classes. BatchNorm in place of local response normalisation."""
    layers = keras_module().layers
    w = cfg.width
    inputs = _input(cfg)
    x = conv_bn_relu(inputs, scaled(96, w), 11, "conv1", cfg, strides=4, padding="valid")
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = conv_bn_relu(x, scaled(256, w), 5, "conv2", cfg)
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = conv_bn_relu(x, scaled(384, w), 3, "conv3", cfg)
    x = conv_bn_relu(x, scaled(384, w), 3, "conv4", cfg)
    x = conv_bn_relu(x, scaled(256, w), 3, "conv5", cfg)
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    hidden = (scaled(4096, w), scaled(4096, w))
    return _model(inputs, fc_classifier(x, cfg, hidden=hidden, dropout=cfg.dropout), cfg, "alexnet")


VGG11 = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
VGG16 = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


def _vgg(cfg: ModelConfig, blocks, name: str):
    """``vgg_block(num_convs, channels)``: 3x3 convs and a 2x2/2 max pool; then FC 4096 x 2 with dropout."""
    layers = keras_module().layers
    w = cfg.width
    inputs = x = _input(cfg)
    for b, (convs, channels) in enumerate(blocks, 1):
        for i in range(convs):
            x = conv_bn_relu(x, scaled(channels, w), 3, f"block{b}_{i + 1}", cfg)
        x = layers.MaxPooling2D(2, strides=2, name=f"pool{b}")(x)
    hidden = (scaled(4096, w), scaled(4096, w))
    return _model(inputs, fc_classifier(x, cfg, hidden=hidden, dropout=cfg.dropout), cfg, name)


def vgg11(cfg: ModelConfig):
    return _vgg(cfg, VGG11, "vgg11")


def vgg16(cfg: ModelConfig):
    return _vgg(cfg, VGG16, "vgg16")


def _stem(inputs, cfg: ModelConfig, channels: int):
    """7x7/2 conv and 3x3/2 max pool: GoogLeNet's, ResNet-18's and DenseNet's first block."""
    x = conv_bn_relu(inputs, scaled(channels, cfg.width), 7, "stem", cfg, strides=2)
    return keras_module().layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)


def inception(x, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int, name: str, cfg: ModelConfig):
    """Four parallel branches, concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max pool -> 1x1."""
    layers = keras_module().layers
    w = cfg.width
    p1 = conv_bn_relu(x, scaled(c1, w), 1, f"{name}_b1", cfg)
    p2 = conv_bn_relu(conv_bn_relu(x, scaled(c2[0], w), 1, f"{name}_b2a", cfg), scaled(c2[1], w), 3, f"{name}_b2b", cfg)
    p3 = conv_bn_relu(conv_bn_relu(x, scaled(c3[0], w), 1, f"{name}_b3a", cfg), scaled(c3[1], w), 5, f"{name}_b3b", cfg)
    p4 = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_b4pool")(x)
    p4 = conv_bn_relu(p4, scaled(c4, w), 1, f"{name}_b4", cfg)
    return layers.Concatenate(name=f"{name}_concat")([p1, p2, p3, p4])


# (block name, c1, c2, c3, c4): an ``inception`` block; "pool": a 3x3/2 max pool between stages
InceptionSpec = tuple[str, int, tuple[int, int], tuple[int, int], int]
GOOGLENET: tuple[InceptionSpec | Literal["pool"], ...] = (
    ("3a", 64, (96, 128), (16, 32), 32),
    ("3b", 128, (128, 192), (32, 96), 64),
    "pool",
    ("4a", 192, (96, 208), (16, 48), 64),
    ("4b", 160, (112, 224), (24, 64), 64),
    ("4c", 128, (128, 256), (24, 64), 64),
    ("4d", 112, (144, 288), (32, 64), 64),
    ("4e", 256, (160, 320), (32, 128), 128),
    "pool",
    ("5a", 256, (160, 320), (32, 128), 128),
    ("5b", 384, (192, 384), (48, 128), 128),
)


def googlenet(cfg: ModelConfig):
    """GoogLeNet: stem, 1x1-64 and 3x3-192 convs, pool, nine Inception blocks (3a-5b) with 3x3/2 pools
    after 3b and 4e, global average pooling, dropout, one FC layer to the classes."""
    layers = keras_module().layers
    inputs = _input(cfg)
    x = _stem(inputs, cfg, 64)
    x = conv_bn_relu(x, scaled(64, cfg.width), 1, "conv2a", cfg)
    x = conv_bn_relu(x, scaled(192, cfg.width), 3, "conv2b", cfg)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    pools = 2
    for spec in GOOGLENET:
        if spec == "pool":
            pools += 1
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{pools}")(x)
        else:
            x = inception(x, *spec[1:], name=f"inception{spec[0]}", cfg=cfg)
    return _model(inputs, gap_classifier(x, cfg, dropout=cfg.dropout), cfg, "googlenet")


def residual(x, channels: int, name: str, cfg: ModelConfig, strides: int = 1):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, + the shortcut (a 1x1 conv-BN projection where the shape changes), ReLU."""
    layers = keras_module().layers
    y = conv_bn_relu(x, channels, 3, f"{name}_1", cfg, strides=strides)
    y = conv_bn_relu(y, channels, 3, f"{name}_2", cfg, relu=False)
    if strides != 1 or x.shape[-1] != channels:
        x = conv_bn_relu(x, channels, 1, f"{name}_proj", cfg, strides=strides, relu=False)
    return layers.ReLU(name=f"{name}_relu")(layers.Add(name=f"{name}_add")([x, y]))


def resnet18(cfg: ModelConfig):
    """ResNet-18: stem, four stages of two residual blocks (64, 128, 256, 512 channels; stride-2 convs
    start stages 2-4 instead of pooling), global average pooling, one FC layer."""
    inputs = _input(cfg)
    x = _stem(inputs, cfg, 64)
    for s, channels in enumerate((64, 128, 256, 512), 1):
        for b in range(2):
            x = residual(x, scaled(channels, cfg.width), f"stage{s}_{b + 1}", cfg, strides=2 if s > 1 and b == 0 else 1)
    return _model(inputs, gap_classifier(x, cfg), cfg, "resnet18")


def resnet20(cfg: ModelConfig):
    """ResNet-20 for CIFAR (He et al. 2016, 4.2): 3x3-16 conv, three stages of three residual blocks
    (16, 32, 64 channels at 32x32, 16x16, 8x8), global average pooling, one FC layer."""
    inputs = _input(cfg)
    x = conv_bn_relu(inputs, scaled(16, cfg.width), 3, "conv1", cfg)
    for s, channels in enumerate((16, 32, 64), 1):
        for b in range(3):
            x = residual(x, scaled(channels, cfg.width), f"stage{s}_{b + 1}", cfg, strides=2 if s > 1 and b == 0 else 1)
    return _model(inputs, gap_classifier(x, cfg), cfg, "resnet20")


def densenet(cfg: ModelConfig, growth: int = 32, convs: tuple[int, ...] = (4, 4, 4, 4)):
    """DenseNet (d2l.ai's): stem (64 channels), four dense blocks of four 3x3 convs at growth rate 32,
    each conv's output concatenated to its input; transition layers (2x2/2 average pooling, 1x1 conv
    halving the channels) between them; global average pooling, one FC layer."""
    layers = keras_module().layers
    inputs = _input(cfg)
    x = _stem(inputs, cfg, 64)
    k = scaled(growth, cfg.width)
    for b, n in enumerate(convs, 1):
        for i in range(n):
            y = conv_bn_relu(x, k, 3, f"dense{b}_{i + 1}", cfg)
            x = layers.Concatenate(name=f"dense{b}_{i + 1}_concat")([x, y])
        if b < len(convs):
            # pool, then the 1x1 conv: in the original (BN-ReLU-conv-pool) the conv and the pooling are
            # both linear and commute; in this order the next block's Concatenate gets a ReLU output, not
            # a pooling output (a pooling op must keep its input's int8 scale, and tfmot gives a
            # Concatenate's inputs the Concatenate's scale: the converter refused the other order,
            # "average_pool_2d op quantization parameters violate the same scale constraint")
            x = layers.AveragePooling2D(2, strides=2, name=f"transition{b}_pool")(x)
            x = conv_bn_relu(x, max(8, int(x.shape[-1]) // 2), 1, f"transition{b}", cfg)
    return _model(inputs, gap_classifier(x, cfg), cfg, "densenet")


# name: (builder, default input size, smallest input size it takes, description, what differs from the original)
SEEDS = {
    "lenet": (
        lenet,
        28,
        12,
        "LeNet-5 (2 convs, FC 120-84-classes)",
        "ReLU and BatchNorm instead of sigmoids (QAT folds BN; sigmoids quantise poorly)",
    ),
    "alexnet": (
        alexnet,
        224,
        67,
        "AlexNet (5 convs, FC 4096-4096-classes)",
        "BatchNorm instead of local response normalisation (LRN has no int8 kernel and does not fold)",
    ),
    "vgg11": (
        vgg11,
        224,
        32,
        "VGG-11 (8 convs in 5 vgg_blocks, FC 4096-4096-classes)",
        "BatchNorm after each conv (VGG-BN: folds into the conv; the original has none)",
    ),
    "vgg16": (
        vgg16,
        224,
        32,
        "VGG-16 (13 convs in 5 vgg_blocks, FC 4096-4096-classes)",
        "BatchNorm after each conv (VGG-BN: folds into the conv; the original has none)",
    ),
    "googlenet": (
        googlenet,
        96,
        32,
        "GoogLeNet (9 Inception blocks of 4 concatenated branches, GAP, FC)",
        "BatchNorm after each conv (Inception-v2 style; folds into the conv); dropout before the "
        "classifier at the profile's rate (the paper's 0.4; d2l.ai's version has none)",
    ),
    "resnet18": (
        resnet18,
        96,
        32,
        "ResNet-18 (8 residual blocks, GAP, FC)",
        "as the original (BN after each conv, 1x1 conv + BN projection shortcuts)",
    ),
    "resnet20": (
        resnet20,
        32,
        8,
        "ResNet-20 for CIFAR (9 residual blocks, 16-32-64 channels, GAP, FC)",
        "1x1 conv + BN projection shortcuts where the shape changes (the paper's zero-padding 'option A' has no int8 builtin)",
    ),
    "densenet": (
        densenet,
        96,
        32,
        "DenseNet (4 dense blocks of 4 convs, growth rate 32, transition layers, GAP, FC)",
        "Conv -> BN -> ReLU instead of the pre-activation BN -> ReLU -> Conv (only a BN after a conv "
        "folds); transitions pool before their 1x1 conv (int8 cannot feed a pooling output into a "
        "concatenation after QAT); no BN-ReLU after the last block",
    ),
}
