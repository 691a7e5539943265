"""What the device reads from a run folder: the file names and which model a folder means.

The training side (``pipeline.runs.folder``) writes these files and takes the names from here, so
the two sides cannot drift apart.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_app.errors import ModelLoadError

INT8_TFLITE = "model_int8.tflite"
EDGETPU_TFLITE = "model_int8_edgetpu.tflite"  # written by edgetpu_compiler
SIDECAR_NAME = "model.json"
LABELS_TXT = "labels.txt"


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
