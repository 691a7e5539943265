"""Float-vs-int8 accuracy reports: every variant's predictions and the figures computed from them.

Metrics are plain numpy on saved predictions (``predictions.npz``), so a report can be
recomputed without running the models again. This module computes and returns; the
orchestrator (``pipeline.stages.orchestrator``) writes the files, ``pipeline.report.render`` formats them and
``pipeline.report.plots`` draws them.
"""

from __future__ import annotations

import math
import os
import platform
from typing import Any

import numpy as np

from edge_app.contract.files import FLOAT_KERAS, FLOAT_TFLITE, INT8_TFLITE, PTQ_TFLITE
from edge_app.runtime import usable_cores

from pipeline.report.predict import topk
from pipeline.runs.folder import RunFolder, now

REPORT_SCHEMA_VERSION = 2
VARIANTS = ("float_keras", "float_tflite", "ptq_int8", "qat_int8")
TITLES = {"float_keras": "float Keras", "float_tflite": "float TFLite", "ptq_int8": "PTQ int8", "qat_int8": "QAT int8"}
VARIANT_FILES = {"float_keras": FLOAT_KERAS, "float_tflite": FLOAT_TFLITE, "ptq_int8": PTQ_TFLITE, "qat_int8": INT8_TFLITE}


# --------------------------------------------------------------------------- metrics


def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    return np.bincount(y * n + pred, minlength=n * n).reshape(n, n)


def variant_metrics(probs: np.ndarray, y: np.ndarray, float_probs: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    n = len(labels)
    pred = probs.argmax(1)
    cm = confusion(y, pred, n)
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), np.nan)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), np.nan)
    float_pred = float_probs.argmax(1)
    rows = np.arange(len(y))
    return {
        "top1": float(np.mean(pred == y)),
        "top5": topk(probs, y, 5) if n > 5 else None,
        "agreement_with_float": float(np.mean(pred == float_pred)),
        # how far the probability of the float model's top-1 class moved
        "mean_abs_top1_prob_change": float(np.mean(np.abs(probs[rows, float_pred] - float_probs[rows, float_pred]))),
        "per_class": {
            labels[i]: {"precision": _nan_none(precision[i]), "recall": _nan_none(recall[i]), "support": int(cm[i].sum())} for i in range(n)
        },
        "confusion_matrix": cm.tolist(),
    }


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray, alpha: float = 0.05) -> dict[str, Any]:
    """Is the top-1 difference between two models on the same images more than chance?

    McNemar's exact test: only the images that exactly one of the two gets right carry evidence
    (``a_only``, ``b_only``); if the models were equally good, each such image would be A's with
    probability 1/2, so the two-sided p-value is 2 * P(X <= min(a_only, b_only)), X ~ Binomial(n, 1/2),
    n = a_only + b_only (computed in logs: n reaches thousands).
    """
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        p = 1.0
    else:
        ks = np.arange(k + 1)
        log_terms = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in ks]) - n * math.log(2)
        p = min(1.0, 2.0 * float(np.exp(log_terms).sum()))
    return {
        "a_only_correct": a_only,
        "b_only_correct": b_only,
        "difference_points": 100.0 * (b.mean() - a.mean()) if len(a) else 0.0,
        "p_value": p,
        "significant": bool(p < alpha),
        "alpha": alpha,
        "test": "McNemar exact (two-sided)",
    }


#: the pairs a report tests: (A, B) -> the change from A to B
SIGNIFICANCE_PAIRS = (("float_keras", "qat_int8"), ("float_keras", "ptq_int8"), ("ptq_int8", "qat_int8"))


def significance(preds: dict[str, np.ndarray], y: np.ndarray) -> dict[str, dict[str, Any]]:
    """McNemar's test for each of :data:`SIGNIFICANCE_PAIRS`, keyed "A_vs_B"."""
    correct = {k: preds[k].argmax(1) == y for k in preds}
    return {f"{a}_vs_{b}": {"a": a, "b": b, **mcnemar(correct[a], correct[b])} for a, b in SIGNIFICANCE_PAIRS if a in correct and b in correct}


def _nan_none(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def latency_ms(model_path: os.PathLike, image: np.ndarray, threads: int, runs: int = 200) -> dict[str, float]:
    """Invoke-only latency per image through the edge runtime (median and p95, milliseconds)."""
    from edge_app.runtime import Classifier

    return Classifier(model_path, num_threads=threads).invoke_latency(image, runs)


# --------------------------------------------------------------------------- predictions and the report


def predict_variants(run: RunFolder, x: np.ndarray, progress: bool = True, float_model=None) -> dict[str, np.ndarray]:
    """Every variant's scores on ``x``: the float Keras model, then each .tflite through the edge runtime."""
    from pipeline.errors import ReportError
    from pipeline.report.predict import predict_keras, predict_tflite

    missing = [f for f in VARIANT_FILES.values() if not run.path(f).exists()]
    if missing:
        raise ReportError(f"{run.root} lacks {', '.join(missing)}", f"finish the run with `nin-pipeline build --resume --out {run.root}`")
    preds = {"float_keras": predict_keras(run.load_float() if float_model is None else float_model, x)}
    for key in VARIANTS[1:]:
        preds[key] = predict_tflite(run.path(VARIANT_FILES[key]), x, progress=progress, desc=TITLES[key])
    return preds


def build_report(
    run: RunFolder,
    preds: dict[str, np.ndarray],
    y: np.ndarray,
    labels: tuple[str, ...],
    x: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
    latency: bool = True,
    float_model=None,
) -> dict[str, Any]:
    """Every figure of the report (report.json's content); nothing is written here."""
    from pipeline.models.nin import count_macs

    float_probs = preds["float_keras"]
    float_model = run.load_float() if float_model is None else float_model
    params, macs = int(float_model.count_params()), count_macs(float_model)
    variants: dict[str, dict[str, Any]] = {}
    threads = usable_cores()
    for key in VARIANTS:
        path = run.path(VARIANT_FILES[key])
        v = variant_metrics(preds[key], y, float_probs, labels)
        v["file"] = VARIANT_FILES[key]
        v["bytes"] = path.stat().st_size
        v["params"], v["macs"] = params, macs
        v["delta_vs_float"] = v["top1"] - variants.get("float_keras", v)["top1"]
        if latency and key != "float_keras" and x is not None and len(x):
            v["latency_ms"] = {"1_thread": latency_ms(path, x[0], 1), f"{threads}_threads": latency_ms(path, x[0], threads)}
        variants[key] = v
    f_pred, q_pred = float_probs.argmax(1), preds["qat_int8"].argmax(1)
    flipped = np.flatnonzero(f_pred != q_pred)
    class_drop = sorted(
        (
            (
                labels[i],
                variants["float_keras"]["per_class"][labels[i]]["recall"] or 0.0,
                variants["qat_int8"]["per_class"][labels[i]]["recall"] or 0.0,
            )
            for i in range(len(labels))
        ),
        key=lambda r: r[2] - r[1],
    )
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        **(meta or {}),
        "test_images": int(len(y)),
        "split": "test",
        "labels": list(labels),
        "variants": variants,
        "int8_bytes_ratio": variants["qat_int8"]["bytes"] / variants["float_tflite"]["bytes"],
        "significance": significance(preds, y),
        "int8_losses": {
            "classes_by_accuracy_change": [{"class": c, "float": a, "int8": b, "change": b - a} for c, a, b in class_drop],
            "flipped": [{"index": int(i), "true": labels[y[i]], "float": labels[f_pred[i]], "int8": labels[q_pred[i]]} for i in flipped[:200]],
            "flipped_count": int(len(flipped)),
        },
        "machine": {"platform": platform.platform(), "cpus": threads},
        "created": now(),
    }
    layer_errors = run.read_layer_errors()  # written by the convert stage
    if layer_errors:
        report["int8_layer_errors"] = layer_errors
    edgetpu = run.read_edgetpu()  # written by `nin-pipeline edgetpu check/compile` and --target edgetpu
    if edgetpu:
        report["edgetpu"] = edgetpu
    target = run.read_target()  # written by the convert stage and `nin-pipeline check-target`
    if target:
        report["target"] = target
    return report


def flipped_indices(preds: dict[str, np.ndarray]) -> np.ndarray:
    """Images whose top-1 differs between the float model and the QAT int8 model."""
    return np.flatnonzero(preds["float_keras"].argmax(1) != preds["qat_int8"].argmax(1))
