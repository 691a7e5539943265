"""The ``model.json`` sidecar: what a device needs to know to feed and read the model.

The schema lives here, on the device side, because the device is its reader; the
training pipeline imports it to write the file. Everything is plain JSON so that any
language can read it.

How a camera pixel becomes a model input (all of it is recorded in the sidecar)::

    x     = pixel * input.pixel_scale                 # uint8 0..255 -> value_range
    x     = (x - input.mean) / input.std              # per channel
    q     = round(x / input.quant.scale) + input.quant.zero_point, clipped to the dtype

For the models this project builds, pixel_scale = 1/255, mean = 0, std = 1 and the
int8 input has scale 1/255 and zero point -128, so ``q = pixel - 128`` exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_app.contract.files import SIDECAR_NAME
from edge_app.errors import SidecarError
from edge_app.fsutil import atomic_write_text

SCHEMA_VERSION = 1

# The models this project builds see pixels scaled to 0..1. The training side divides by PIXEL_RANGE
# rather than multiplying by PIXEL_SCALE: the float32 inputs then stay bit-identical to the ones the
# models were always trained and calibrated on.
PIXEL_RANGE = 255.0
PIXEL_SCALE = 1.0 / PIXEL_RANGE

MAX_SIDECAR_BYTES = 2**20  # a model.json is a few KB (50,000 labels fit); a larger file is refused before it is parsed
_DTYPES = {"int8", "uint8", "float32"}
_OUTPUT_KINDS = {"probabilities", "logits", "class_maps"}
_COLOR_ORDERS = {"RGB", "BGR", "GRAY"}


@dataclass(frozen=True)
class Quantization:
    """Affine quantisation of one tensor: ``real = scale * (q - zero_point)``.

    A float tensor has scale 0.0 and zero point 0 (TFLite's own convention).
    """

    scale: float
    zero_point: int


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, ...]  # [1, H, W, C]
    dtype: str  # int8 | uint8 | float32
    layout: str = "NHWC"
    color_order: str = "RGB"  # RGB | BGR | GRAY
    pixel_scale: float = PIXEL_SCALE
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    quant: Quantization = Quantization(0.0, 0)

    @property
    def height(self) -> int:
        return int(self.shape[1])

    @property
    def width(self) -> int:
        return int(self.shape[2])

    @property
    def channels(self) -> int:
        return int(self.shape[3])


@dataclass(frozen=True)
class OutputSpec:
    """One model output. ``name`` is its role: "scores" ([1, classes]) or "class_maps"
    ([1, H, W, classes]: NiN's per-class confidence maps before global average pooling,
    ReLU outputs >= 0). The .tflite's output order is the converter's choice, so a reader
    matches outputs by shape, not by position."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str = "probabilities"  # probabilities | logits | class_maps
    quant: Quantization = Quantization(0.0, 0)


@dataclass(frozen=True)
class InputStats:
    """What the training images looked like at the model's input, for `edge-app check-input`.

    ``pixel_*`` are uint8 pixel units (0..255) at the input size, in the input's colour order:
    per-channel mean and std over every pixel; the 5th and 95th percentile of the images' mean
    brightness; ``contrast`` the mean of each image's own std per channel (its spatial spread). ``value_*`` are the same images'
    real-valued input tensor (after the training pipeline's scaling), per channel."""

    images: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    brightness_p5: float
    brightness_p95: float
    contrast: float
    value_mean: tuple[float, ...]
    value_std: tuple[float, ...]


@dataclass(frozen=True)
class Sidecar:
    labels: tuple[str, ...]
    input: InputSpec
    outputs: tuple[OutputSpec, ...]
    dataset: str
    arch: str
    width: float
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    pipeline_version: str = ""
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    input_stats: InputStats | None = None  # absent in run folders converted before it existed

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def has_output(self, name: str) -> bool:
        return any(out.name == name for out in self.outputs)

    def output(self, name: str = "scores") -> OutputSpec:
        for out in self.outputs:
            if out.name == name:
                return out
        raise SidecarError(f"model.json has no output named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d


def _quant(d: dict[str, Any]) -> Quantization:
    return Quantization(scale=float(d["scale"]), zero_point=int(d["zero_point"]))


def _stats(d: dict[str, Any] | None, channels: int) -> InputStats | None:
    if d is None:
        return None
    st = InputStats(
        images=int(d["images"]),
        pixel_mean=tuple(float(v) for v in d["pixel_mean"]),
        pixel_std=tuple(float(v) for v in d["pixel_std"]),
        brightness_p5=float(d["brightness_p5"]),
        brightness_p95=float(d["brightness_p95"]),
        contrast=float(d["contrast"]),
        value_mean=tuple(float(v) for v in d["value_mean"]),
        value_std=tuple(float(v) for v in d["value_std"]),
    )
    if {len(st.pixel_mean), len(st.pixel_std), len(st.value_mean), len(st.value_std)} != {channels}:
        raise SidecarError(f"input_stats must give one mean and std per input channel ({channels})")
    return st


def _value_range(values: Any) -> tuple[float, float]:
    pair = tuple(float(v) for v in values)
    if len(pair) != 2:
        raise SidecarError(f"input.value_range must be [low, high]; got {list(pair)}")
    return pair


def _check_choice(what: str, value: str, allowed: set[str]) -> str:
    if value not in allowed:
        raise SidecarError(f"{what} is {value!r}", f"expected one of {sorted(allowed)}")
    return value


def sidecar_from_dict(d: dict[str, Any]) -> Sidecar:
    """Build a :class:`Sidecar` from parsed JSON, with a clear error for anything off."""
    if not isinstance(d, dict):
        raise SidecarError("model.json must hold a JSON object")
    version = d.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SidecarError(
            f"model.json has schema_version {version!r}; this edge_app reads version {SCHEMA_VERSION}",
            "rebuild the run folder with the same nin-pipeline version, or upgrade edge_app",
        )
    try:
        i = d["input"]
        inp = InputSpec(
            shape=tuple(int(v) for v in i["shape"]),
            dtype=_check_choice("input.dtype", i["dtype"], _DTYPES),
            layout=_check_choice("input.layout", i.get("layout", "NHWC"), {"NHWC"}),
            color_order=_check_choice("input.color_order", i.get("color_order", "RGB"), _COLOR_ORDERS),
            pixel_scale=float(i["pixel_scale"]),
            value_range=_value_range(i["value_range"]),
            mean=tuple(float(v) for v in i["mean"]),
            std=tuple(float(v) for v in i["std"]),
            quant=_quant(i["quant"]),
        )
        outs = tuple(
            OutputSpec(
                name=str(o["name"]),
                shape=tuple(int(v) for v in o["shape"]),
                dtype=_check_choice("output.dtype", o["dtype"], _DTYPES),
                kind=_check_choice("output.kind", o.get("kind", "probabilities"), _OUTPUT_KINDS),
                quant=_quant(o["quant"]),
            )
            for o in d["outputs"]
        )
        sc = Sidecar(
            labels=tuple(str(v) for v in d["labels"]),
            input=inp,
            outputs=outs,
            dataset=str(d["dataset"]),
            arch=str(d["arch"]),
            width=float(d["width"]),
            files={str(k): str(v) for k, v in d.get("files", {}).items()},
            pipeline_version=str(d.get("pipeline_version", "")),
            created=str(d.get("created", "")),
            input_stats=_stats(d.get("input_stats"), inp.shape[-1] if len(inp.shape) == 4 else 0),
        )
    except KeyError as exc:
        raise SidecarError(f"model.json lacks the key {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:  # e.g. a list where an object goes, int(1e999)
        if isinstance(exc, SidecarError):
            raise
        raise SidecarError(f"model.json has a malformed value: {' '.join(str(exc).split())[:200]}") from None
    if len(inp.shape) != 4:
        raise SidecarError(f"input.shape must be [1, H, W, C]; got {list(inp.shape)}")
    if len(inp.mean) not in (1, inp.channels) or len(inp.std) not in (1, inp.channels):
        raise SidecarError("input.mean and input.std need one value or one per channel")
    scores = sc.output("scores")
    if scores.shape[-1] != len(sc.labels):
        raise SidecarError(f"model.json lists {len(sc.labels)} labels but the scores output has {scores.shape[-1]} classes")
    maps = [o for o in sc.outputs if o.name == "class_maps"]
    if maps and (len(maps[0].shape) != 4 or maps[0].shape[-1] != len(sc.labels)):
        raise SidecarError(f"model.json's class_maps output must be [1, H, W, {len(sc.labels)}]; got {list(maps[0].shape)}")
    return sc


def read_sidecar(path: str | os.PathLike) -> Sidecar:
    """Read ``model.json`` (or the ``model.json`` inside a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / SIDECAR_NAME
    if not path.is_file():
        raise SidecarError(f"no sidecar at {path}", "a run folder from `nin-pipeline build` holds model.json")
    with open(path, "rb") as f:
        raw = f.read(MAX_SIDECAR_BYTES + 1)  # no more than that is read, whatever the file's size
    if len(raw) > MAX_SIDECAR_BYTES:
        raise SidecarError(
            f"{path} is larger than {MAX_SIDECAR_BYTES // 2**20} MB: not a model.json (a few KB)", "rebuild it with `nin-pipeline convert`"
        )
    try:
        # ValueError: bad JSON, or an integer of more digits than Python converts; RecursionError: nested too deep
        data = json.loads(raw.decode("utf-8"))
        return sidecar_from_dict(data)
    except SidecarError as exc:
        raise SidecarError(f"{path}: {exc.message}", exc.hint) from None
    except (ValueError, RecursionError) as exc:
        why = "nested too deep" if isinstance(exc, RecursionError) else " ".join(str(exc).split())[:200]
        if "integer string conversion" in why:  # Python's own hint (set_int_max_str_digits) is no fix for a user
            why = "an integer of more digits than Python reads"
        raise SidecarError(f"{path} is not valid JSON ({why})", "rebuild it with `nin-pipeline convert`") from None


def write_sidecar(path: str | os.PathLike, sidecar: Sidecar) -> Path:
    """Validate by round-tripping, then write atomically."""
    d = sidecar.to_dict()
    sidecar_from_dict(json.loads(json.dumps(d)))
    text = json.dumps(d, indent=2) + "\n"
    if len(text.encode("utf-8")) > MAX_SIDECAR_BYTES:  # it could not be read back
        raise SidecarError(f"model.json would be larger than {MAX_SIDECAR_BYTES // 2**20} MB", "give fewer or shorter labels")
    return atomic_write_text(path, text)
