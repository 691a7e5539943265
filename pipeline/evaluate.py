"""Accuracy of Keras and TFLite models on uint8 image arrays.

TFLite models run through ``edge_app.runtime.Classifier``: the very code a device runs,
quantisation maths included, so the accuracy reported is the accuracy a device gets.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def predict_keras(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    probs = model.predict(x.astype(np.float32) / 255.0, batch_size=batch_size, verbose=0)
    return np.asarray(probs, np.float32)


def predict_tflite(path: str | os.PathLike, x: np.ndarray, *, pixel_scale: float = 1.0 / 255.0,
                   num_threads: int | None = None, progress: bool = True, desc: str | None = None) -> np.ndarray:
    from tqdm import tqdm

    from edge_app.runtime import Classifier

    clf = Classifier(path, pixel_scale=pixel_scale, num_threads=num_threads)
    if clf.input_size != tuple(x.shape[1:]):
        raise ValueError(f"{path} takes {clf.input_size} images but the data is {tuple(x.shape[1:])}")
    out = np.empty((len(x), clf.num_classes), np.float32)
    for i in tqdm(range(len(x)), desc=desc or Path(path).name, unit="img", disable=not progress,
                  mininterval=1.0, leave=False):
        out[i] = clf.predict(x[i])
    return out


def top1(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == y)) if len(y) else float("nan")
