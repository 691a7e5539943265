"""The report's plots as PNG bytes (matplotlib, Agg): training curves, confusion matrices float vs
int8, per-class accuracy and thumbnails of the images whose top-1 flipped."""

from __future__ import annotations

import io

import numpy as np

from pipeline.report.figures import TITLES, flipped_indices


def make_plots(
    report: dict,
    preds: dict[str, np.ndarray],
    y: np.ndarray,
    labels: tuple[str, ...],
    x: np.ndarray | None,
    history: dict[str, dict[str, list[float]]],
) -> dict[str, bytes]:
    """{file name: PNG bytes} for the training curves (``history``: "train"/"qat" -> CSV columns),
    the confusion matrices, the per-class accuracy and the flipped images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}

    def save(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        out[name] = buf.getvalue()

    # training curves: float and QAT, loss and accuracy, train vs validation
    hist = {tag: history.get(tag) or {} for tag in ("train", "qat")}
    if any(hist.values()):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        offset = len(hist["train"].get("epoch", []))
        for tag, h in hist.items():
            if not h:
                continue
            ep = np.arange(len(h["loss"])) + 1 + (offset if tag == "qat" else 0)
            name = "float" if tag == "train" else "QAT"
            for ax, metric in zip(axes, ("loss", "accuracy")):
                ax.plot(ep, h[metric], "-o", ms=3, label=f"{name} train")
                if f"val_{metric}" in h:
                    ax.plot(ep, h[f"val_{metric}"], "--s", ms=3, label=f"{name} validation")
        for ax, metric in zip(axes, ("loss", "accuracy")):
            ax.set_xlabel("epoch")
            ax.set_title(metric)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "plot_training.png")

    # confusion matrices, float vs QAT int8
    n = len(labels)
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(4.5, 0.45 * n + 2), max(4, 0.45 * n + 1.5)))
    for ax, key in zip(axes, ("float_keras", "qat_int8")):
        cm = np.asarray(report["variants"][key]["confusion_matrix"])
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{TITLES[key]}: top-1 {100 * report['variants'][key]['top1']:.2f}%")
        if n <= 20:
            ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
            ax.set_yticks(range(n), labels, fontsize=8)
            for i in range(n):
                for j in range(n):
                    if cm[i, j]:
                        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6, color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    save(fig, "plot_confusion.png")

    # per-class accuracy (recall) bars, float vs int8
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * n + 2), 3.6))
    idx = np.arange(n)
    for key, w in (("float_keras", -0.2), ("qat_int8", 0.2)):
        vals = [report["variants"][key]["per_class"][c]["recall"] or 0 for c in labels]
        ax.bar(idx + w, vals, width=0.4, label=TITLES[key])
    ax.set_xticks(idx, labels if n <= 30 else [""] * n, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (recall)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save(fig, "plot_per_class.png")

    # thumbnails of images whose top-1 flipped between float and int8
    flipped = flipped_indices(preds)
    if x is not None and len(flipped):
        # a few of every true class rather than the first 24 (which would all be class 0)
        rank: dict[int, int] = {}
        ranked = []
        for i in flipped:
            r = rank.get(int(y[i]), 0)
            rank[int(y[i])] = r + 1
            ranked.append((r, int(y[i]), int(i)))
        show = [i for _, _, i in sorted(ranked)][:24]
        cols = min(8, len(show))
        rows = int(np.ceil(len(show) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
        fp, qp = preds["float_keras"].argmax(1), preds["qat_int8"].argmax(1)
        for ax in axes.flat:
            ax.axis("off")
        for ax, i in zip(axes.flat, show):
            img = x[i]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, interpolation="nearest")
            ax.set_title(f"true {labels[y[i]]}\nfloat {labels[fp[i]]}\nint8 {labels[qp[i]]}", fontsize=6)
        save(fig, "plot_flipped.png")
    return out
