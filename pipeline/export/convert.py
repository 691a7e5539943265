"""Quantisation-aware fine-tuning and TFLite conversion.

Models with a second output (``models.with_class_maps``) keep it: the .tflite then has
two outputs, per-class scores and the per-class maps, both int8 in an int8 model.

* ``quantize(model)``: tfmot's ``quantize_model`` on a flat float model (BatchNorm folds into
  the preceding Conv2D because every conv is written Conv -> BN -> ReLU).
* ``to_tflite_float``: the float model as a float32 .tflite.
* ``to_tflite_int8``: full-integer conversion (``TFLITE_BUILTINS_INT8`` only, int8 or uint8
  input and output). From the QAT model the ranges come from training; from the float model
  (post-training quantisation, PTQ) they come from a representative set of training images.

All models are converted with a static batch of 1 (``[1, H, W, C]``): what edge runtimes
and the Edge TPU want.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_app.contract.sidecar import PIXEL_RANGE, PIXEL_SCALE

if TYPE_CHECKING:
    from edge_app.contract.sidecar import Sidecar

IO_TYPES = ("int8", "uint8")
TARGETS = ("cpu", "edgetpu")  # edgetpu: uint8 input/output, checked (and compiled when the compiler is there)


@dataclass(frozen=True)
class QatConfig:
    epochs: int = 2
    lr: float = 0.001  # a small fraction of the float run's peak rate; cosine decay, no warm-up
    batch_size: int = 128
    calibration_samples: int = 1024  # training images that set the starting activation ranges
    # QAT's targets: distill * the float model's probabilities + (1 - distill) * the labels. Above 0,
    # fine-tuning keeps the int8 model's answers close to the float model's (the agreement
    # target) instead of only chasing the labels; 0 trains on the labels alone.
    distill: float = 0.0


@dataclass(frozen=True)
class ConvertConfig:
    io_type: str = "int8"  # int8 | uint8
    representative_samples: int = 256
    class_maps: bool = True  # export the per-class confidence maps as a second output
    target: str = "cpu"  # cpu | edgetpu


def quantize(model):
    """Wrap ``model`` for quantisation-aware training (tfmot's default 8-bit scheme)."""
    import tensorflow_model_optimization as tfmot

    qat = tfmot.quantization.keras.quantize_model(model)
    # tfmot's wrapper lists every quantised kernel as its own trainable weight (QuantizeWrapper.build), even
    # a fixed one's (nin-cifar's 1/9 depthwise pool): moved back among the weights that are never trained
    fixed = {layer.name for layer in model.layers if not layer.trainable and layer.weights}
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if inner is not None and inner.name in fixed:
            # a fixed layer trains nothing, not even its ranges. The variables themselves are marked too: Keras
            # re-tracks a layer's variables when it loads weights (Layer._update_trackables) and would list a
            # still-"trainable" one again among the trainable, so that the saved weights no longer load
            for w in layer._trainable_weights:
                w._trainable = False
            layer._non_trainable_weights.extend(w for w in layer._trainable_weights if all(w is not v for v in layer._non_trainable_weights))
            layer._trainable_weights = []
    return qat


def freeze_batch_norm(model) -> int:
    """Run every BatchNormalization layer in inference mode with fixed statistics.

    Used for QAT: the converter folds BatchNorm into the convolution with its *moving*
    statistics, so fine-tuning with those same fixed statistics trains what gets deployed
    (the figures: docs/benchmarks/training-speed.md, "QAT targets").
    """
    import tf_keras as keras

    n = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            n += 1
    return n


def calibrate_qat_ranges(qat_model, float_model, images, batch_size: int = 128) -> dict[str, tuple[float, float]]:
    """Start QAT's activation ranges from measured ones instead of tfmot's [-6, 6].

    tfmot's activation quantizers begin at [-6, 6] and move towards the observed range by an
    EMA with decay 0.999: after one epoch of CIFAR-10 (352 steps) 70% of that arbitrary
    start is still in the range, which wastes most of the 256 levels of a ReLU output that
    lives in [0, 2]. This sets each range to the mean per-batch min/max of the same
    tensor in the float model (what the EMA converges to), measured on ``images`` (uint8).
    Returns {qat variable prefix: (min, max)}.
    """
    import numpy as np
    import tf_keras as keras

    float_names = {layer.name for layer in float_model.layers}
    targets = []  # (qat layer, min var, max var, float layer name or None for the input)
    for layer in qat_model.layers:
        inner = getattr(layer, "layer", None)
        # variable names: "<layer>/output_min:0" in wrappers, "<layer>/<layer>_min:0" in the
        # input QuantizeLayer (whose name gains a suffix when a process quantises twice)
        short = {v.name.rsplit("/", 1)[-1].split(":")[0]: v for v in layer.non_trainable_weights}
        if inner is not None and "output_min" in short and inner.name in float_names:
            targets.append((layer, short["output_min"], short["output_max"], inner.name))
        elif type(layer).__name__ == "QuantizeLayer":
            vmin = [v for k, v in short.items() if k.endswith("_min")]
            vmax = [v for k, v in short.items() if k.endswith("_max")]
            if len(vmin) == 1 and len(vmax) == 1:
                targets.append((layer, vmin[0], vmax[0], None))
    names = [t[3] for t in targets if t[3] is not None]
    probe = keras.Model(float_model.inputs, [float_model.get_layer(n).output for n in names])
    lo: dict[str, list[float]] = {n: [] for n in names}
    hi: dict[str, list[float]] = {n: [] for n in names}
    in_lo, in_hi = [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].astype(np.float32) / PIXEL_RANGE
        outs = probe(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for n, o in zip(names, outs):
            o = np.asarray(o)
            lo[n].append(min(float(o.min()), 0.0))
            hi[n].append(max(float(o.max()), 0.0))
        in_lo.append(min(float(x.min()), 0.0))
        in_hi.append(float(x.max()))
    result = {}
    for layer, vmin, vmax, name in targets:
        a, b = (np.mean(in_lo), np.mean(in_hi)) if name is None else (np.mean(lo[name]), np.mean(hi[name]))
        vmin.assign(np.full(vmin.shape, a, np.float32))
        vmax.assign(np.full(vmax.shape, b, np.float32))
        result[layer.name] = (float(a), float(b))
    return result


def _converter(model):
    import tensorflow as tf

    shape = [1, *model.input_shape[1:]]
    # A model with several outputs becomes a .tflite with several outputs, in an order the
    # converter chooses: readers tell them apart by shape (scores [1, C], maps [1, H, W, C]).
    # The converter saves what it is given as a SavedModel first. Given the Keras model, tf_keras
    # serialises every layer (traces each call), most of a conversion's time. A bare module holding
    # only the function and the weights gives the same .tflite bytes (float, QAT int8, PTQ int8) in
    # about a third of the time (docs/benchmarks/convert.md).
    holder = tf.Module()
    holder.weights = list(model.variables)
    holder.serve = tf.function(lambda x: model(x, training=False))
    concrete = holder.serve.get_concrete_function(tf.TensorSpec(shape, tf.float32, name="image"))
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)


def to_tflite_float(model) -> bytes:
    return _converter(model).convert()


def to_tflite_int8(model, representative: np.ndarray | None, io_type: str = "int8") -> bytes:
    """Full-integer .tflite. ``representative``: uint8 NHWC training images (required for PTQ;
    for a QAT model it only fills ranges the training did not record)."""
    import tensorflow as tf

    if io_type not in IO_TYPES:
        raise ValueError(f"unknown io type {io_type!r}; choose one of {', '.join(IO_TYPES)}")
    conv = _converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative is not None:
        conv.representative_dataset = lambda: _rep_gen(representative)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    dtype = tf.int8 if io_type == "int8" else tf.uint8
    conv.inference_input_type = dtype
    conv.inference_output_type = dtype
    return conv.convert()


def _rep_gen(images: np.ndarray) -> Iterable[list[np.ndarray]]:
    for img in images:
        yield [img[None].astype(np.float32) / PIXEL_RANGE]


def describe_tflite(
    path: Path, labels: tuple[str, ...], *, dataset: str, arch: str, width: float, hashed: Iterable[Path] = (), input_stats=None
) -> Sidecar:
    """The ``model.json`` sidecar of an int8 .tflite, read from the model's own tensors so the two
    never disagree; ``hashed``: the files whose sha256 it records (those that exist); ``input_stats``:
    the training images' statistics (see :func:`training_input_stats`).

    Outputs are told apart by rank: the scores are [1, classes]; the class maps, when
    exported, [1, H, W, classes]."""
    import datetime as dt

    from edge_app.contract.sidecar import InputSpec, OutputSpec, Quantization, Sidecar
    from edge_app.fsutil import sha256_file
    from edge_app.runtime import load_interpreter

    from pipeline import __version__

    def quant(detail: dict) -> Quantization:
        return Quantization(float(detail["quantization"][0]), int(detail["quantization"][1]))

    interp, _ = load_interpreter(path, num_threads=1)
    i = interp.get_input_details()[0]
    shape = tuple(int(v) for v in i["shape"])
    channels = shape[-1]
    outputs = []
    for o in sorted(interp.get_output_details(), key=lambda d: len(d["shape"])):
        name = "scores" if len(o["shape"]) == 2 else "class_maps"
        outputs.append(
            OutputSpec(
                name=name,
                shape=tuple(int(v) for v in o["shape"]),
                dtype=np.dtype(o["dtype"]).name,
                kind="probabilities" if name == "scores" else "class_maps",
                quant=quant(o),
            )
        )
    return Sidecar(
        labels=tuple(labels),
        input=InputSpec(
            shape=shape,
            dtype=np.dtype(i["dtype"]).name,
            layout="NHWC",
            color_order="GRAY" if channels == 1 else "RGB",
            pixel_scale=PIXEL_SCALE,
            value_range=(0.0, 1.0),
            mean=(0.0,) * channels,
            std=(1.0,) * channels,
            quant=quant(i),
        ),
        outputs=tuple(outputs),
        dataset=dataset,
        arch=arch,
        width=width,
        files={Path(p).name: sha256_file(p) for p in hashed if Path(p).exists()},
        pipeline_version=__version__,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        input_stats=input_stats,
    )


def training_input_stats(images: np.ndarray):
    """What `edge-app check-input` compares a camera's frames with: the training images (uint8, at the
    input size, in the input's channel order) and the tensor values training fed the model (pixels / 255,
    as in :func:`_rep_gen` and the training data pipeline)."""
    from edge_app.checks.inputcheck import measure

    return measure(images, images.astype(np.float32) / PIXEL_RANGE)
