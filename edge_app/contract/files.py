"""The run folder's files, the one list both sides use: every name a build writes, the model
variants with their table labels, and which model a folder means.

The training side (``pipeline.runs.folder``) writes these files and the device side reads them; both
take the names from here, so nowhere else spells a file of the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edge_app.errors import ModelLoadError

# what the device needs
INT8_TFLITE = "model_int8.tflite"
EDGETPU_TFLITE = "model_int8_edgetpu.tflite"  # written by edgetpu_compiler
SIDECAR_NAME = "model.json"
LABELS_TXT = "labels.txt"
# the other models
FLOAT_KERAS = "model_float.keras"
QAT_WEIGHTS = "model_qat.weights.h5"
FLOAT_TFLITE = "model_float32.tflite"
PTQ_TFLITE = "model_int8_ptq.tflite"
CLIENTS_TFLITE = "model_uint8_metadata.tflite"  # for MediaPipe and the Task Library (`nin-pipeline clients`)
# settings, progress and records
CONFIG_JSON = "config.json"
STATE_JSON = "state.json"
EDGETPU_LOG = "model_int8_edgetpu.log"
EDGETPU_JSON = "edgetpu.json"
TARGET_JSON = "target.json"  # will the int8 model load on the target runtimes (`check-target`)
LAYER_ERRORS_JSON = "layer_errors.json"
CLIENTS_JSON = "clients.json"
EVAL_JSON = "eval.json"  # `edge-app eval`'s figures, measured on a device
DEVICE_BENCH_JSON = "device_bench.json"  # `edge-app bench --json` run on a device through its agent, with the device and the model's sha256
DEVICE_TARGET_JSON = "device_target.json"  # `check-target --device`: the device's own answer (target.json stays this host's)
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PREDICTIONS = "predictions.npz"
TRAIN_LOG = "train.log"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
LOCK_FILE = ".lock"


def history_csv(tag: str) -> str:
    """The per-epoch metrics of one training stage ("train" or "qat")."""
    return f"history_{tag}.csv"


@dataclass(frozen=True)
class ModelVariant:
    """One of the .tflite files a build can leave, with the name tables give it."""

    label: str
    file: str
    int8: bool


FLOAT32 = ModelVariant("float32", FLOAT_TFLITE, False)
QAT_INT8 = ModelVariant("QAT int8", INT8_TFLITE, True)
PTQ_INT8 = ModelVariant("PTQ int8", PTQ_TFLITE, True)
EDGETPU_INT8 = ModelVariant("Edge TPU int8", EDGETPU_TFLITE, True)
MODEL_VARIANTS = (FLOAT32, QAT_INT8, PTQ_INT8, EDGETPU_INT8)
SHIPPED = (QAT_INT8, EDGETPU_INT8)  # what a device runs: the int8 model, or its Edge TPU compilation


@dataclass(frozen=True)
class RunFiles:
    """The paths of one run folder's files, for code that reads a folder it did not write
    (compare, sweep, bench); the builder itself goes through ``pipeline.runs.folder.RunFolder``."""

    root: Path

    def __truediv__(self, name: str) -> Path:
        return Path(self.root) / name

    @property
    def config(self) -> Path:
        return self / CONFIG_JSON

    @property
    def report(self) -> Path:
        return self / REPORT_JSON

    @property
    def eval(self) -> Path:
        return self / EVAL_JSON

    @property
    def sidecar(self) -> Path:
        return self / SIDECAR_NAME

    def shipped_models(self) -> list[Path]:
        """The device models present: model_int8.tflite and, once compiled, its Edge TPU file."""
        return [self / v.file for v in SHIPPED if (self / v.file).is_file()]

    def is_built(self) -> bool:
        """A finished build: its settings and its report are there."""
        return self.config.is_file() and self.report.is_file()


DEMO = "demo"
DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"  # the quick CIFAR-10 model, shipped to try things before training


def resolve_model_path(model: str | os.PathLike, delegate: str = "cpu") -> Path:
    """A run folder means its model_int8.tflite (model_int8_edgetpu.tflite for the Edge TPU, when present).
    ``demo`` (when no such file or folder exists here) is the bundled quick CIFAR-10 model."""
    p = Path(model)
    if str(model) == DEMO and not p.exists():
        p = DEMO_DIR
    if p.is_dir():
        if delegate == "edgetpu" and (p / EDGETPU_TFLITE).is_file():
            return p / EDGETPU_TFLITE
        p = p / INT8_TFLITE
    if not p.is_file():
        raise ModelLoadError(f"no model at {p}", "give a run folder from `nin-pipeline build` or a .tflite file")
    return p
