"""Accuracy of Keras and TFLite models on uint8 image arrays.

TFLite models run through ``edge_app.runtime.Classifier``: the very code a device runs,
quantisation maths included, so the accuracy reported is the accuracy a device gets.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_app.contract.sidecar import PIXEL_RANGE, PIXEL_SCALE


def predict_keras(model, x, batch_size: int = 256) -> np.ndarray:
    """Scores of uint8 images ``x`` (an array or a pipeline.data.arrays collection), a batch at a time."""
    out = [
        np.asarray(model.predict_on_batch(x[i : i + batch_size].astype(np.float32) / PIXEL_RANGE), np.float32)
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, int(model.output_shape[-1])), np.float32)


def predict_classifier(clf, x: np.ndarray, *, desc: str = "", progress: bool = True) -> np.ndarray:
    """Scores of every image in ``x`` (uint8 NHWC) through an edge_app Classifier, with a progress bar."""
    from pipeline.progress import progress as bar

    out = np.empty((len(x), clf.num_classes), np.float32)
    for i in bar(range(len(x)), total=len(x), desc=desc, disable=not progress, leave=False):
        out[i] = clf.predict(x[i])
    return out


def predict_tflite(
    path: str | os.PathLike,
    x: np.ndarray,
    *,
    pixel_scale: float = PIXEL_SCALE,
    num_threads: int | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> np.ndarray:
    from edge_app.errors import ModelLoadError
    from edge_app.runtime import Classifier

    clf = Classifier(path, pixel_scale=pixel_scale, num_threads=num_threads)
    if clf.input_size != tuple(x.shape[1:]):
        raise ModelLoadError(f"{path} takes {clf.input_size} images but the data is {tuple(x.shape[1:])}")
    return predict_classifier(clf, x, desc=desc or Path(path).name, progress=progress)


def topk(probs: np.ndarray, y: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the ``k`` highest scores."""
    if not len(y):
        return float("nan")
    # a stable sort breaks ties by the lower class index, as argmax does: with int8 scores ties are
    # common, and top-1 here must agree with the report's argmax
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def top1(probs: np.ndarray, y: np.ndarray) -> float:
    return topk(probs, y, 1)


def evaluate_model(
    model_path: str | os.PathLike,
    dataset: str,
    data_dir: str | os.PathLike | None = None,
    *,
    limit_test: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    ignore_checksum: bool = False,
) -> dict:
    """Top-1 (and top-5) of any classification model file on a dataset's test split.

    ``.tflite`` runs through the edge runtime; ``.keras`` / ``.h5`` through tf_keras.
    A model whose input size, channels or class count does not fit the data is refused
    with a message saying which; so is a .tflite whose sha256 the model.json beside it does not
    record, as on the device (``ignore_checksum``: warn and go on).
    """
    import time

    from edge_app.contract.files import INT8_TFLITE, SIDECAR_NAME
    from edge_app.contract.sidecar import read_sidecar
    from edge_app.errors import ModelLoadError
    from edge_app.model import check_checksum
    from edge_app.runtime import Classifier

    from pipeline.data.formats import load_raw
    from pipeline.data.splits import test_subset

    path = Path(model_path)
    if path.is_dir() and (path / INT8_TFLITE).is_file():  # a run folder: its shipped int8 model
        path = path / INT8_TFLITE
    if not path.is_file():
        raise ModelLoadError(f"no model file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        if (path.parent / SIDECAR_NAME).is_file():
            check_checksum(path, read_sidecar(path.parent / SIDECAR_NAME), ignore_checksum)
        clf = Classifier(path, num_threads=threads)
        shape, classes = clf.input_size, clf.num_classes
        keras_model = None
    elif suffix in (".keras", ".h5"):
        import tf_keras as keras

        try:
            keras_model = keras.models.load_model(path, compile=False)
        except Exception as exc:  # zip, h5py and Keras raise many kinds for a bad file
            raise ModelLoadError(f"{path} is not a Keras model tf_keras can load ({type(exc).__name__}: {exc})") from None
        if len(keras_model.inputs) != 1 or len(keras_model.input_shape) != 4:
            raise ModelLoadError(f"{path} is not an image classifier: it needs one NHWC image input")
        shape, classes = tuple(keras_model.input_shape[1:]), int(keras_model.output_shape[-1])
    else:
        raise ModelLoadError(f"{path}: unknown model type {suffix!r}; give a .tflite, .keras or .h5 file")
    raw = load_raw(dataset, data_dir, input_size=shape[0] if dataset == "folder" else None)
    x, y = raw.x_test, raw.y_test
    if limit_test:
        idx = test_subset(y, limit_test)
        x, y = x[idx], y[idx]
    if tuple(x.shape[1:3]) != tuple(shape[:2]):
        raise ModelLoadError(
            f"{path.name} takes {shape[0]}x{shape[1]} images but {dataset} test images are "
            f"{x.shape[1]}x{x.shape[2]}: evaluate it on the data it was built for"
        )
    if x.shape[3] != shape[2]:
        raise ModelLoadError(f"{path.name} takes {shape[2]}-channel images but {dataset} has {x.shape[3]} channel(s)")
    if classes != len(raw.labels):
        raise ModelLoadError(f"{path.name} predicts {classes} classes but {dataset} has {len(raw.labels)}")
    t = time.perf_counter()
    if keras_model is not None:
        probs = predict_keras(keras_model, x)
    else:
        probs = predict_classifier(clf, x, desc=path.name, progress=progress)
    seconds = time.perf_counter() - t
    top5 = topk(probs, y, 5) if classes > 5 else None
    return {
        "model": str(path),
        "dataset": dataset,
        "images": int(len(y)),
        "top1": top1(probs, y),
        "top5": top5,
        "seconds": seconds,
        "images_per_second": len(y) / seconds if seconds else float("nan"),
    }
