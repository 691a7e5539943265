"""Quantisation-aware fine-tuning and TFLite conversion.

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

from dataclasses import dataclass
from typing import Iterable

import numpy as np

IO_TYPES = ("int8", "uint8")


@dataclass(frozen=True)
class QatConfig:
    epochs: int = 2
    lr: float = 0.005  # a fraction of the float run's peak rate
    batch_size: int = 128


@dataclass(frozen=True)
class ConvertConfig:
    io_type: str = "int8"  # int8 | uint8
    representative_samples: int = 256


def quantize(model):
    """Wrap ``model`` for quantisation-aware training (tfmot's default 8-bit scheme)."""
    import tensorflow_model_optimization as tfmot

    return tfmot.quantization.keras.quantize_model(model)


def quantize_scope():
    import tensorflow_model_optimization as tfmot

    return tfmot.quantization.keras.quantize_scope()


def _converter(model):
    import tensorflow as tf

    shape = [1, *model.input_shape[1:]]
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32, name="image"))
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)


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
        yield [img[None].astype(np.float32) / 255.0]
