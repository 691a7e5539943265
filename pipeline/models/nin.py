"""Network-in-Network architectures (Lin, Chen, Yan 2013), as flat tf_keras functional models.

A registry of named architectures, timm-style: ``build_model(ModelConfig(arch="nin-cifar", ...))``;
NiN is defined here, the seed architectures it is compared with (LeNet ... DenseNet) in ``zoo``.

Every convolution is written Conv2D(activation=None) -> BatchNormalization -> ReLU so
that quantisation-aware training folds the BatchNorm into the convolution. The model
is one flat functional graph (tfmot cannot quantise nested models) and holds no
preprocessing layer (``Rescaling`` is not quantisable): inputs are float pixels
already scaled to [0, 1], which the sidecar records.

The last mlpconv block has one channel per class; its maps are NiN's per-class
confidence maps, averaged by global average pooling into the class scores. The layer
that produces them is named ``CLASS_MAPS_LAYER``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.models import zoo
from pipeline.models.layers import HEADS, POOLS, ModelConfig, conv_bn_relu, fc_classifier, fixed_pool, keras_module, scaled, softmax

__all__ = [
    "ARCHS",
    "HEADS",
    "POOLS",
    "ModelConfig",
    "build_model",
    "count_macs",
    "describe",
    "has_class_maps",
    "scaled",
    "summary_lines",
    "with_class_maps",
]

CLASS_MAPS_LAYER = "class_maps"
CLASS_MAPS_OUTPUT = f"{CLASS_MAPS_LAYER}_relu"  # the layer whose output is the per-class maps


def mlpconv(
    x, spec: list[tuple[int, int]], name: str, cfg: ModelConfig, first_stride: int = 1, first_padding: str = "same", last_name: str | None = None
):
    """One mlpconv block: a k x k convolution followed by 1 x 1 convolutions, each with ReLU.

    ``spec`` lists (kernel, filters) per convolution, filters already scaled.
    """
    for i, (kernel, filters) in enumerate(spec):
        layer_name = last_name if (last_name and i == len(spec) - 1) else f"{name}_{i + 1}"
        x = conv_bn_relu(x, filters, kernel, layer_name, cfg, strides=first_stride if i == 0 else 1, padding=first_padding if i == 0 else "same")
    return x


def _head(x, cfg: ModelConfig):
    """``gap``: global average pooling of the class maps, then softmax: no fully connected layer.
    ``fc`` / ``fc-dropout`` (nin-cifar, the paper's section 4.6 ablation: "the other parts of the
    model remaining the same"): the class maps flattened into one FC layer to the classes (after
    dropout 0.5 for ``fc-dropout``)."""
    if cfg.head == "gap":
        return softmax(keras_module().layers.GlobalAveragePooling2D(name="gap")(x), cfg)
    return fc_classifier(x, cfg, dropout=0.5 if cfg.head == "fc-dropout" else 0.0)


def nin_cifar(cfg: ModelConfig):
    """The paper's CIFAR-10 NiN: three mlpconv blocks, 3x3/2 pooling and dropout between them.

    192-160-96 (5x5), 192-192-192 (5x5), 192-192-classes (3x3), as in the authors' Caffe model
    (max pooling after block 1, average pooling after block 2; ``pool2`` other forms of the latter).
    """
    keras = keras_module()
    layers = keras.layers
    w = cfg.width
    inputs = keras.Input(shape=cfg.input_shape, name="image")
    x = mlpconv(inputs, [(5, scaled(192, w)), (1, scaled(160, w)), (1, scaled(96, w))], "block1", cfg)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="drop1")(x)
    x = mlpconv(x, [(5, scaled(192, w)), (1, scaled(192, w)), (1, scaled(192, w))], "block2", cfg)
    x = fixed_pool(x, cfg.pool2, "pool2")
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="drop2")(x)
    x = mlpconv(x, [(3, scaled(192, w)), (1, scaled(192, w)), (1, cfg.num_classes)], "block3", cfg, last_name=CLASS_MAPS_LAYER)
    return keras.Model(inputs, _head(x, cfg), name=f"nin_cifar_w{w:g}")


def nin_imagenet(cfg: ModelConfig):
    """The larger NiN for camera-sized inputs (e.g. 224x224): 11x11/4-96, 5x5-256, 3x3-384,
    3x3-classes mlpconv blocks (each k x k conv followed by two 1x1 convs of the same width),
    3x3/2 max pooling, dropout before the last block, GAP (the d2l.ai / seed articles' layout)."""
    keras = keras_module()
    layers = keras.layers
    w = cfg.width
    inputs = keras.Input(shape=cfg.input_shape, name="image")
    x = mlpconv(inputs, [(11, scaled(96, w)), (1, scaled(96, w)), (1, scaled(96, w))], "block1", cfg, first_stride=4, first_padding="valid")
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = mlpconv(x, [(5, scaled(256, w)), (1, scaled(256, w)), (1, scaled(256, w))], "block2", cfg)
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = mlpconv(x, [(3, scaled(384, w)), (1, scaled(384, w)), (1, scaled(384, w))], "block3", cfg)
    x = layers.MaxPooling2D(3, strides=2, name="pool3")(x)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="drop3")(x)
    x = mlpconv(x, [(3, cfg.num_classes), (1, cfg.num_classes), (1, cfg.num_classes)], "block4", cfg, last_name=CLASS_MAPS_LAYER)
    return keras.Model(inputs, _head(x, cfg), name=f"nin_imagenet_w{w:g}")


@dataclass(frozen=True)
class ArchInfo:
    build: Callable
    default_input_size: int
    min_input_size: int
    description: str
    changes: str = ""  # what differs from the original, and why (QAT-friendly forms)
    class_maps: bool = False  # per-class confidence maps before a global average pooling (NiN's)
    heads: tuple[str, ...] = ("gap",)  # --head values it takes; the first is its own
    pools: tuple[str, ...] = ("avg",)  # --pool2 values it takes (only nin-cifar has a choice)


ARCHS: dict[str, ArchInfo] = {
    "nin-cifar": ArchInfo(
        nin_cifar,
        32,
        8,
        "the paper's CIFAR-10 NiN (3 mlpconv blocks, ~0.97M params at width 1)",
        "BatchNorm after each conv (folds into it at conversion)",
        class_maps=True,
        heads=HEADS,
        pools=POOLS,
    ),
    "nin-imagenet": ArchInfo(
        nin_imagenet,
        224,
        67,
        "the larger NiN for camera-sized inputs (4 mlpconv blocks)",
        "BatchNorm after each conv (folds into it at conversion)",
        class_maps=True,
    ),
    **{name: ArchInfo(*spec) for name, spec in zoo.SEEDS.items()},
}


def has_class_maps(cfg: ModelConfig) -> bool:
    """Whether the model has per-class maps a device can show as a heatmap (NiN with its GAP head)."""
    info = ARCHS.get(cfg.arch)
    return bool(info and info.class_maps and cfg.head == "gap")


def build_model(cfg: ModelConfig):
    """Build a registered architecture; raises ValueError with the known names for an unknown one."""
    try:
        info = ARCHS[cfg.arch]
    except KeyError:
        raise ValueError(f"unknown arch {cfg.arch!r}; choose one of {', '.join(ARCHS)}") from None
    h, w, _ = cfg.input_shape
    if min(h, w) < info.min_input_size:
        raise ValueError(f"{cfg.arch} needs inputs of at least {info.min_input_size}x{info.min_input_size}; got {h}x{w}")
    if cfg.head not in info.heads:
        raise ValueError(
            f"--head {cfg.head} is not an option of {cfg.arch} (it has {', '.join(info.heads)}); "
            f"{', '.join(h for h in HEADS if h != 'gap')} are nin-cifar's ablation of its GAP head"
        )
    if cfg.pool2 not in info.pools:
        raise ValueError(f"--pool2 {cfg.pool2} is not an option of {cfg.arch} (it has {', '.join(info.pools)})")
    return info.build(cfg)


def with_class_maps(model):
    """A two-output view of a NiN model, float or QAT-wrapped: (scores, class maps).

    The class maps are the last mlpconv block's ReLU outputs, [H', W', classes] (paper
    section 4.7): exported as a second model output they let a device show *where* in the
    frame each class is seen, at no extra compute (GAP reads the same tensor). The weights
    are shared with ``model``; nothing is copied.
    """
    keras = keras_module()
    for name in (CLASS_MAPS_OUTPUT, f"quant_{CLASS_MAPS_OUTPUT}"):  # tfmot prefixes wrapped layers
        try:
            layer = model.get_layer(name)
        except ValueError:
            continue
        return keras.Model(model.inputs, [model.output, layer.output], name=model.name)
    raise ValueError(f"{model.name} has no {CLASS_MAPS_OUTPUT!r} layer: it is not a NiN from this registry")


def count_macs(model) -> int:
    """Multiply-accumulates of one forward pass: convolutions and fully connected layers (the rest,
    pooling, BatchNorm folded at conversion, additions, is < 1% of any model here)."""
    keras = keras_module()
    total = 0
    for layer in model.layers:
        layer = getattr(layer, "layer", layer)  # a QAT wrapper
        if isinstance(layer, keras.layers.Conv2D):
            _, oh, ow, oc = layer.output_shape
            kh, kw = layer.kernel_size
            ic = layer.input_shape[-1]
            total += oh * ow * oc * kh * kw * ic
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    return int(total)


def describe(model) -> list[dict]:
    """One row per layer: name, type, output shape, parameters."""
    rows = []
    for layer in model.layers:
        shape = layer.output_shape
        if isinstance(shape, list):
            shape = shape[0]
        rows.append({"name": layer.name, "type": type(layer).__name__, "output_shape": tuple(shape[1:]), "params": int(layer.count_params())})
    return rows


def summary_lines(cfg: ModelConfig) -> list[str]:
    """`nin-pipeline describe`: a table of every layer's output shape and parameters, and the totals."""
    model = build_model(cfg)
    h, w, c = cfg.input_shape
    info = ARCHS[cfg.arch]
    lines = [
        f"{model.name}: input {h}x{w}x{c}, {cfg.num_classes} classes" + (f", head {cfg.head}" if len(info.heads) > 1 else ""),
        f"{cfg.arch}: {info.description}; smallest input {info.min_input_size}x{info.min_input_size}",
        f"differs from the original: {info.changes}" if info.changes else "",
        "class maps: " + ("yes (a heatmap on the device)" if has_class_maps(cfg) else "no (no heatmap)"),
        f"{'layer':<22}{'type':<24}{'output shape':<20}{'params':>10}",
        "-" * 76,
    ]
    lines = [line for line in lines if line]
    lines += [f"{r['name']:<22}{r['type']:<24}{str(r['output_shape']):<20}{r['params']:>10,}" for r in describe(model)]
    return lines + ["-" * 76, f"total parameters: {model.count_params():,}   MACs per image: {count_macs(model):,}"]
