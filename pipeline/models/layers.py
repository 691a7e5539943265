"""What every architecture is built from: the model settings, the width rule and the
QAT-friendly layer patterns (Conv2D(activation=None) -> BatchNormalization -> ReLU, so that
quantisation-aware training folds each BatchNorm into its convolution).

Models are flat tf_keras functional graphs (tfmot cannot quantise nested models) without
preprocessing layers (``Rescaling`` is not quantisable): inputs are float pixels in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

HEADS = ("gap", "fc", "fc-dropout")
# nin-cifar's second 3x3/2 pooling: the paper's average pool, or a form XNNPACK runs in int8 (it has no
# int8 AVERAGE_POOL_2D, google/XNNPACK#3040, and cuts the graph there): a max pool, or the average written
# as a depthwise convolution with fixed 1/9 weights
POOLS = ("avg", "max", "depthwise")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "nin-cifar"
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (32, 32, 3)
    width: float = 1.0
    batch_norm: bool = True
    dropout: float = 0.5
    weight_decay: float = 0.0  # L2 on kernels; the trainer prefers decoupled decay
    float32_softmax: bool = True  # keep the softmax in float32 under mixed precision
    head: str = "gap"  # nin-cifar only: gap (the paper's), fc or fc-dropout (its ablation, section 4.6)
    pool2: str = "avg"  # nin-cifar only: one of POOLS (a run folder without it was built with the paper's avg)


def keras_module():
    import tf_keras as keras

    return keras


def scaled(channels: int, width: float, floor: int = 8) -> int:
    """Channel count after the width multiplier (at least ``floor``, a multiple of 8 when >= 16); at
    width 1 the original's own counts (LeNet's 6, 16, 84)."""
    if width == 1:
        return channels
    c = channels * width
    if c >= 16:
        return int(max(16, round(c / 8) * 8))
    return max(floor, int(round(c)))


def conv_bn_relu(x, filters: int, kernel: int, name: str, cfg: ModelConfig, strides: int = 1, padding: str = "same", relu: bool = True):
    keras = keras_module()
    layers = keras.layers
    reg = keras.regularizers.l2(cfg.weight_decay) if cfg.weight_decay else None
    x = layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding=padding,
        use_bias=not cfg.batch_norm,
        kernel_initializer="he_normal",
        kernel_regularizer=reg,
        name=f"{name}_conv",
    )(x)
    if cfg.batch_norm:
        # momentum 0.9 (Keras' default is 0.99): the moving statistics settle within a few
        # hundred steps, so short fine-tunes and smoke runs evaluate correctly too.
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    if relu:
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


def fixed_pool(x, kind: str, name: str):
    """A 3x3/2 pooling of ``kind`` (one of POOLS). ``depthwise``: the mean of each 3x3 window as a depthwise
    convolution whose weights are 1/9 and never trained (exact in int8: one weight per channel, 127 x its
    scale); at the borders it divides by 9 where the average pool divides by the pixels inside."""
    keras = keras_module()
    layers = keras.layers
    if kind == "avg":
        return layers.AveragePooling2D(3, strides=2, padding="same", name=name)(x)
    if kind == "max":
        return layers.MaxPooling2D(3, strides=2, padding="same", name=name)(x)
    if kind == "depthwise":
        return layers.DepthwiseConv2D(
            3, strides=2, padding="same", use_bias=False, depthwise_initializer=keras.initializers.Constant(1 / 9), trainable=False, name=name
        )(x)
    raise ValueError(f"unknown pooling {kind!r}; choose one of {', '.join(POOLS)}")


def dense(x, units: int, name: str, cfg: ModelConfig, relu: bool = True):
    """A fully connected layer (ReLU fused in the layer, as tfmot quantises it)."""
    keras = keras_module()
    reg = keras.regularizers.l2(cfg.weight_decay) if cfg.weight_decay else None
    return keras.layers.Dense(units, activation="relu" if relu else None, kernel_initializer="he_normal", kernel_regularizer=reg, name=name)(x)


def softmax(x, cfg: ModelConfig):
    """The class scores: a softmax named ``scores`` (float32 under mixed precision)."""
    return keras_module().layers.Activation("softmax", dtype="float32" if cfg.float32_softmax else None, name="scores")(x)


def fc_classifier(x, cfg: ModelConfig, hidden: tuple[int, ...] = (), dropout: float = 0.0):
    """Flatten, the hidden FC layers (ReLU, each followed by dropout), the class layer, softmax."""
    layers = keras_module().layers
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(hidden):
        x = dense(x, units, f"fc{i + 1}", cfg)
        if dropout:
            x = layers.Dropout(dropout, name=f"fc{i + 1}_drop")(x)
    if not hidden and dropout:
        x = layers.Dropout(dropout, name="fc_drop")(x)
    return softmax(dense(x, cfg.num_classes, "classifier", cfg, relu=False), cfg)


def gap_classifier(x, cfg: ModelConfig, dropout: float = 0.0):
    """Global average pooling, (dropout,) one FC layer to the classes, softmax: the GoogLeNet/ResNet/DenseNet head."""
    layers = keras_module().layers
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name="gap_drop")(x)
    return softmax(dense(x, cfg.num_classes, "classifier", cfg, relu=False), cfg)
