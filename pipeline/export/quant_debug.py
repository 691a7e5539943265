"""Where int8 loses: each layer of a shipped int8 .tflite against the same layer of a Keras model.

The int8 model is run with every intermediate tensor kept (``experimental_preserve_all_tensors``);
each int8 tensor whose name carries a Keras layer's name (the converter names a fused
Conv+BatchNorm+ReLU output after the ReLU layer; QAT wrappers add a ``quant_`` prefix) is
dequantised and compared with that layer's output in the Keras model, on the same images. The
reference is the model the .tflite was converted from: the float model for PTQ int8 (where
post-training quantisation loses), the QAT model for QAT int8 (where the shipped int8 kernels
depart from the quantisation that training simulated; QAT's fine-tuning itself moved the weights,
so the float model is not its float self).

Per layer: the RMSE in the tensor's own quantisation steps (RMSE / scale; uniform rounding alone
gives 1/sqrt(12) = 0.29 steps), and the noise-to-signal ratio (RMSE / the float activations'
standard deviation), which is comparable across layers. The error is accumulated: a layer's
figure includes what earlier layers passed on, so the layer that *adds* the most (its ratio minus
the largest ratio before it) is where to look. Measured on the real .tflite files, so it also
catches what the converter did, not only a re-quantisation of the model.

TensorFlow Lite's own ``QuantizationDebugger`` gives a per-op error but only for models it
quantises itself (post-training): for a QAT model it finds no NumericVerify op ("Please check if
the quantized model is in debug mode", TF 2.21), so it cannot judge the model this project ships.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_app.contract.sidecar import PIXEL_RANGE

log = logging.getLogger("pipeline")

#: the RMSE, in steps, that rounding alone gives: a uniform error over one step
ROUNDING_RMSE_STEPS = 1.0 / math.sqrt(12.0)


@dataclass(frozen=True)
class LayerError:
    layer: str  # the float Keras layer compared
    tensor: str  # the int8 tensor's name in the .tflite
    scale: float  # its quantisation step
    rmse: float  # root-mean-square of (dequantised int8 - float), in the tensor's units
    rmse_steps: float  # rmse / scale: 0.29 is rounding alone
    nsr: float  # rmse / std of the float activations
    added_nsr: float  # nsr minus the largest nsr of the layers before it: the error this layer adds

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _layer_of(tensor_name: str, names: set[str]) -> str | None:
    """The float layer a tensor is the output of: its first name (fused ops are joined by ';'),
    the path component that is a layer's name once tfmot's ``quant_`` prefix is taken off."""
    parts = list(reversed(tensor_name.split(";")[0].split("/")))
    for part in parts:
        if part in names:
            return part
    for part in parts:
        if re.sub(r"^quant_", "", part) in names:
            return re.sub(r"^quant_", "", part)
    return None


def layer_errors(tflite: str | os.PathLike | bytes, float_model, images: np.ndarray, *, max_images: int = 32) -> list[LayerError]:
    """Every int8 tensor that matches a float layer, in the float model's layer order.
    ``images``: uint8 NHWC; both models see them as float32 in [0, 1], the int8 one quantised."""
    import tf_keras as keras

    from edge_app.runtime import dequantize, interpreter_class, quantize, usable_cores

    Interpreter, _ = interpreter_class("auto")
    kw = {"model_content": tflite} if isinstance(tflite, bytes) else {"model_path": os.fspath(tflite)}
    with warnings.catch_warnings():  # "intended for debugging purposes only": that is the purpose
        warnings.simplefilter("ignore", UserWarning)
        interp = Interpreter(**kw, experimental_preserve_all_tensors=True, num_threads=usable_cores())
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    order = [layer.name for layer in float_model.layers]
    names = set(order)

    candidates: dict[str, dict] = {}
    for t in interp.get_tensor_details():
        q = t.get("quantization_parameters") or {}
        if t["dtype"] not in (np.int8, np.uint8) or len(q.get("scales", [])) != 1 or t["index"] == inp["index"]:
            continue  # int8 activations only (per-channel scales are weights)
        layer = _layer_of(t["name"], names)
        if layer and layer not in candidates and tuple(t["shape"]) == (1, *float_model.get_layer(layer).output.shape[1:]):
            candidates[layer] = t
    if not candidates:
        return []
    layers = [n for n in order if n in candidates]
    probe = keras.Model(float_model.inputs, [float_model.get_layer(n).output for n in layers])

    x = images[:max_images].astype(np.float32) / PIXEL_RANGE
    floats = probe.predict(x, verbose=0, batch_size=32)
    floats = floats if isinstance(floats, list) else [floats]
    sq = {n: 0.0 for n in layers}
    count = {n: 0 for n in layers}
    s_inp = inp["quantization_parameters"]
    for i in range(len(x)):
        interp.set_tensor(inp["index"], quantize(x[i : i + 1], float(s_inp["scales"][0]), int(s_inp["zero_points"][0]), inp["dtype"]))
        interp.invoke()
        for n, ref in zip(layers, floats):
            t = candidates[n]
            p = t["quantization_parameters"]
            got = dequantize(interp.get_tensor(t["index"]), float(p["scales"][0]), int(p["zero_points"][0]))
            sq[n] += float(np.sum((got - ref[i : i + 1]) ** 2))
            count[n] += got.size
    rows, worst = [], 0.0
    for j, n in enumerate(layers):
        t = candidates[n]
        scale = float(t["quantization_parameters"]["scales"][0])
        rmse = math.sqrt(sq[n] / max(count[n], 1))
        spread = float(np.std(floats[j]))
        nsr = rmse / spread if spread > 0 else float("nan")
        rows.append(
            LayerError(
                layer=n,
                tensor=t["name"],
                scale=scale,
                rmse=rmse,
                rmse_steps=rmse / scale if scale else float("nan"),
                nsr=nsr,
                added_nsr=nsr - worst if not math.isnan(nsr) else float("nan"),
            )
        )
        if not math.isnan(nsr):
            worst = max(worst, nsr)
    return rows


def worst_first(rows: list[LayerError]) -> list[LayerError]:
    """The layers that add the most error first."""
    return sorted(rows, key=lambda r: -r.added_nsr if not math.isnan(r.added_nsr) else math.inf)


def short_name(tensor: str, width: int = 60) -> str:
    """A readable tensor name: TFLite joins fused ops' names with ';', the first is the op's own."""
    name = tensor.split(";")[0]
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def layer_error_tables(variants: dict[str, tuple[os.PathLike, Any]], rep: np.ndarray, keep: int = 12) -> dict[str, Any]:
    """Per int8 variant (its .tflite and the Keras model it came from), the layers that add the
    most error first (:func:`layer_errors`), or why they could not be measured."""
    t = time.time()
    out: dict[str, Any] = {}
    for key, (path, model) in variants.items():
        try:
            rows = worst_first(layer_errors(path, model, rep))
        except Exception as exc:  # noqa: BLE001 - a diagnostic: its failure must not fail the build
            why = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            log.warning("per-layer int8 error of %s not measured: %s", key, why)
            out[key] = {"error": why}
            continue
        out[key] = {
            "layers": len(rows),
            "reference": "QAT model" if key == "qat_int8" else "float model",
            "rounding_rmse_steps": ROUNDING_RMSE_STEPS,
            "worst": [r.as_dict() for r in rows[:keep]],
        }
    log.info("convert: per-layer int8 error measured on %d representative images (%.0f s)", min(32, len(rep)), time.time() - t)
    return out
