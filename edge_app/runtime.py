"""TFLite runtime adapter: numpy and an interpreter, nothing else.

Imports the interpreter lazily: ``ai_edge_litert`` (current), then ``tflite_runtime``
(2.14, the last of its line, on Raspberry Pi OS; needs numpy<2). TensorFlow's ``tf.lite.Interpreter``
only when ``--runtime tensorflow`` names it: nothing else here imports TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.contract.sidecar import PIXEL_SCALE
from edge_app.errors import DelegateError, ModelLoadError, RuntimeNotFound

RUNTIMES = ("ai-edge-litert", "tflite-runtime")  # the device's runtimes: what "auto" tries, in this order
TENSORFLOW = "tensorflow"  # tf.lite.Interpreter: only when named (it imports all of TensorFlow, and is deprecated there)
RUNTIME_NAMES = (*RUNTIMES, TENSORFLOW)
_MODULES = {"ai-edge-litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime", TENSORFLOW: "tensorflow"}
_INSTALL = {  # how to install each
    "ai-edge-litert": "`pip install ai-edge-litert`",
    "tflite-runtime": "`pip install tflite-runtime` (2.14, its last release: Python 3.11 at most, numpy<2)",
    TENSORFLOW: "`pip install tensorflow`",
}
DELEGATES = ("cpu", "edgetpu", "gpu", "nnapi")


def _one_line(text: object) -> str:
    """A library's error text, possibly several lines, as one line."""
    return " ".join(str(text).split())


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, a container's cpuset), else
    every core. ``os.cpu_count()`` counts the machine's cores even where the process gets fewer, and
    threads beyond them only queue."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on macOS / Windows
        return os.cpu_count() or 1


def _import_interpreter(name: str) -> Any:
    if name == "ai-edge-litert":
        from ai_edge_litert.interpreter import Interpreter
    elif name == "tflite-runtime":
        from tflite_runtime.interpreter import Interpreter
    else:
        import tensorflow as tf  # only here, when asked for: TF 2.21 has no `from tensorflow.lite import Interpreter`

        Interpreter = tf.lite.Interpreter
    return Interpreter


def installed_runtimes() -> list[str]:
    """The runtimes whose package is present, found without importing it (finding TensorFlow must not start it)."""
    from importlib.util import find_spec

    found = []
    for name in RUNTIME_NAMES:
        try:
            if find_spec(_MODULES[name]) is not None:
                found.append(name)
        except (ImportError, ValueError):  # an import hook that refuses it, a broken package
            continue
    return found


def interpreter_class(runtime: str = "auto") -> tuple[Any, str]:
    """The Interpreter class of the runtime asked for ("auto": the first of RUNTIMES installed) and its name."""
    if runtime != "auto" and runtime not in RUNTIME_NAMES:
        raise RuntimeNotFound(f"unknown runtime {runtime!r}", f"choose auto or one of {', '.join(RUNTIME_NAMES)}")
    failed: dict[str, str] = {}  # why each import failed
    for name in RUNTIMES if runtime == "auto" else (runtime,):
        try:
            return _import_interpreter(name), name
        except Exception as exc:  # noqa: BLE001  (a runtime built for another numpy fails with more than ImportError)
            failed[name] = _one_line(exc)[:200] or type(exc).__name__
    installed = installed_runtimes()
    failed = {n: why for n, why in failed.items() if n in installed}  # present, and yet it does not import
    elsewhere = f"installed here: {', '.join(installed)}" if installed else "none is installed here"
    if runtime != "auto":
        if runtime in failed:
            raise RuntimeNotFound(
                f"the {runtime} runtime is installed but does not import ({failed[runtime]})",
                f"reinstall it for this Python and numpy ({_INSTALL[runtime]}), or choose another with --runtime; {elsewhere}",
            )
        raise RuntimeNotFound(f"the {runtime} runtime is not installed", f"{_INSTALL[runtime]}, or choose another with --runtime; {elsewhere}")
    broken = "; ".join(f"{n} is installed but does not import ({why})" for n, why in failed.items())
    tf_too = f"; TensorFlow is installed: --runtime {TENSORFLOW} runs its tf.lite.Interpreter" if TENSORFLOW in installed else ""
    raise RuntimeNotFound(
        f"no TFLite runtime is installed{f' ({broken})' if broken else ''}",
        f"{_INSTALL['ai-edge-litert']} (or, on Raspberry Pi OS with numpy<2, `pip install tflite-runtime`){tf_too}",
    )


def median_p95(values) -> tuple[float, float]:
    """Median and nearest-rank 95th percentile (never below the median, even for two values)."""
    import math
    import statistics

    s = sorted(values)
    return statistics.median(s), s[max(0, math.ceil(0.95 * len(s)) - 1)]


_EDGETPU_LIB = {"linux": "libedgetpu.so.1", "darwin": "libedgetpu.1.dylib", "win32": "edgetpu.dll"}
_GPU_LIB = "libtensorflowlite_gpu_delegate.so"


def _load_delegate_fn(runtime_name: str):
    if runtime_name == "ai-edge-litert":
        from ai_edge_litert.interpreter import load_delegate
    elif runtime_name == "tflite-runtime":
        from tflite_runtime.interpreter import load_delegate
    else:
        import tensorflow as tf  # only for --runtime tensorflow

        load_delegate = tf.lite.experimental.load_delegate
    return load_delegate


def delegate_library(kind: str, library: str | None = None) -> str:
    """The shared library behind a delegate name (``library`` overrides it)."""
    import sys

    if library:
        return library
    if kind == "edgetpu":
        return _EDGETPU_LIB.get(sys.platform, _EDGETPU_LIB["linux"])
    if kind == "gpu":
        return _GPU_LIB
    if kind == "nnapi":
        raise DelegateError(
            "NNAPI exists only on Android",
            "on Linux use --delegate cpu (XNNPACK), gpu or edgetpu; on a phone, load model_int8.tflite with the NNAPI "
            "delegate from an Android app (see docs/android.md)",
        )
    raise DelegateError(f"unknown delegate {kind!r}", f"choose one of {', '.join(DELEGATES)} or give --delegate-lib")


def make_delegate(kind: str, runtime_name: str, *, library: str | None = None, options: dict[str, str] | None = None):
    """Load an external delegate; None for the CPU (XNNPACK is built into the interpreter)."""
    import gc
    import sys

    if kind == "cpu" and not library:
        return None
    lib = delegate_library(kind, library)
    load = _load_delegate_fn(runtime_name)
    # A failed load leaves a half-made Delegate whose __del__ raises when it is freed; keep
    # that noise off the terminal while it goes.
    error = ""
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda *_: None
    try:
        return load(lib, options or {})
    except (OSError, ValueError, RuntimeError) as exc:
        error = _one_line(exc)
    finally:
        gc.collect()
        sys.unraisablehook = old_hook
    hint = {
        "edgetpu": "install the Edge TPU runtime (libedgetpu1-std from Coral's apt repository) and plug in the device",
        "gpu": "build or install the TFLite GPU delegate library for this device",
    }.get(kind, "check the path and that the library matches this runtime")
    raise DelegateError(f"the {kind} delegate ({lib}) failed to load: {error}", hint)


def load_interpreter(model_path: str | os.PathLike, runtime: str = "auto", num_threads: int | None = None, delegates: list | None = None):
    """Load and allocate a model. ``num_threads`` defaults to every core: the
    interpreter's own default is a single thread."""
    path = Path(model_path)
    if not path.is_file():
        raise ModelLoadError(f"no model file at {path}")
    cls, name = interpreter_class(runtime)
    threads = num_threads or usable_cores()
    try:
        interp = cls(model_path=str(path), num_threads=threads, experimental_delegates=delegates or None)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        if "edgetpu-custom-op" in str(exc):
            raise ModelLoadError(
                f"{path} is compiled for the Edge TPU",
                "run it with --delegate edgetpu, or run model_int8.tflite (the uncompiled one) on the CPU",
            ) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(
            f"{path} is not a TFLite model this runtime can load ({first})", "re-export it with `nin-pipeline convert`"
        ) from None
    return interp, name


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype | type) -> np.ndarray:
    """Real values -> integer tensor: ``q = round(x / scale) + zero_point``, saturated to the dtype.

    Saturation (not wrap-around) matches what TFLite's own quantize op does.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or scale == 0:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor -> real values: ``real = scale * (q - zero_point)``.

    The subtraction is done in int64 first: with int8 data, ``q - zero_point`` in the
    tensor's own dtype would wrap around (e.g. 127 - (-128) overflows int8).
    """
    if scale == 0:
        return q.astype(np.float32)
    return (scale * (q.astype(np.int64) - zero_point)).astype(np.float32)


@dataclass
class TensorInfo:
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int


def _info(detail: dict) -> TensorInfo:
    scale, zp = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        index=int(detail["index"]),
        shape=tuple(int(v) for v in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zp),
    )


def _pick_outputs(outputs: list[TensorInfo], path) -> tuple[TensorInfo, TensorInfo | None]:
    """The scores output ([1, classes]) and, if the model has one, the class-maps output
    ([1, H, W, classes]). Matched by shape: the converter, not us, decides their order."""
    if len(outputs) == 1:
        return outputs[0], None
    scores = [o for o in outputs if len(o.shape) == 2]
    maps = [o for o in outputs if len(o.shape) == 4]
    if len(scores) != 1 or len(maps) > 1 or len(outputs) > 2 or (maps and maps[0].shape[-1] != scores[0].shape[-1]):
        raise ModelLoadError(
            f"{path} has outputs {[list(o.shape) for o in outputs]}",
            "a classifier needs one [1, classes] scores output (and optionally [1, H, W, classes] class maps)",
        )
    return scores[0], (maps[0] if maps else None)


class Classifier:
    """Runs an image classifier .tflite on uint8 pixels and returns float scores.

    ``pixel_scale``, ``mean`` and ``std`` describe the float model's input
    (``x = (pixel * pixel_scale - mean) / std``); they come from the sidecar.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        pixel_scale: float = PIXEL_SCALE,
        mean: tuple[float, ...] = (0.0,),
        std: tuple[float, ...] = (1.0,),
        output_kind: str = "probabilities",
        runtime: str = "auto",
        num_threads: int | None = None,
        delegates: list | None = None,
    ) -> None:
        self.interpreter, self.runtime = load_interpreter(model_path, runtime, num_threads, delegates)
        self.path = Path(model_path)
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
            raise ModelLoadError(f"{model_path} is not an image classifier", "it needs one NHWC image input")
        self.input = _info(inputs[0])
        self.output, self.maps_output = _pick_outputs([_info(d) for d in self.interpreter.get_output_details()], model_path)
        self.pixel_scale = pixel_scale
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.output_kind = output_kind

    @property
    def input_size(self) -> tuple[int, int, int]:
        _, h, w, c = self.input.shape
        return h, w, c

    @property
    def num_classes(self) -> int:
        return int(self.output.shape[-1])

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 HWC pixels (already at the input size) -> the input tensor's dtype."""
        if self.input.dtype == np.uint8 and self._identity_uint8():
            return pixels[None].astype(np.uint8)
        x = (pixels.astype(np.float32) * self.pixel_scale - self.mean) / self.std
        return quantize(x[None], self.input.scale, self.input.zero_point, self.input.dtype)

    def _identity_uint8(self) -> bool:
        # uint8 input with scale == pixel_scale, zero point 0 and no normalisation: q == pixel.
        return (
            abs(self.input.scale - self.pixel_scale) < 1e-9
            and self.input.zero_point == 0
            and not self.mean.any()
            and bool(np.all(self.std == 1))
        )

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """One invoke on an input tensor from :meth:`preprocess`: the raw scores-output tensor of the one image.

        Feed it to :meth:`postprocess` for float scores; :meth:`class_maps` then reads this invoke's maps."""
        self.interpreter.set_tensor(self.input.index, x)
        try:
            self.interpreter.invoke()
        except (RuntimeError, ValueError) as exc:  # e.g. "Input tensor 26 lacks data": it loaded, but cannot run
            raise ModelLoadError(
                f"{self.path} loaded but cannot run: {_one_line(exc)[:300]}",
                "it may be corrupt or not made by this runtime's converter: rebuild it (`nin-pipeline convert RUN`)",
            ) from None
        return self.interpreter.get_tensor(self.output.index)[0]

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Scores (probabilities) for one uint8 HWC image."""
        return self.postprocess(self.invoke(self.preprocess(pixels)))

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        """The output tensor of one image -> float scores (softmax applied only to logits)."""
        scores = dequantize(raw, self.output.scale, self.output.zero_point)
        if self.output_kind == "logits":
            e = np.exp(scores - scores.max())
            scores = e / e.sum()
        return scores

    def invoke_latency(self, pixels: np.ndarray, runs: int = 200, warmup: int = 20) -> dict[str, float]:
        """Invoke-only latency of one image (already at the input size): median and p95 in ms, and FPS."""
        import time

        x = self.preprocess(pixels)
        times = []
        for i in range(warmup + runs):
            t = time.perf_counter()
            self.invoke(x)
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1e3)
        median, p95 = median_p95(times)
        return {"median": median, "p95": p95, "fps": 1e3 * len(times) / sum(times), "runs": runs}

    @property
    def has_class_maps(self) -> bool:
        return self.maps_output is not None

    def class_maps(self) -> np.ndarray:
        """The per-class confidence maps of the last invoke, dequantised: float32 [H', W', classes]."""
        if self.maps_output is None:
            raise ModelLoadError(
                "this model has no class-maps output",
                "rebuild it with `nin-pipeline convert` (class maps are exported unless --no-class-maps was given)",
            )
        m = self.maps_output
        return dequantize(self.interpreter.get_tensor(m.index)[0], m.scale, m.zero_point)

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.predict(img) for img in images])
