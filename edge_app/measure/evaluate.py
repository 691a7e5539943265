"""`edge-app eval`: int8 accuracy measured on the device itself, through its real runtime, delegate
and preprocessing (the camera loop's resize), on a labelled folder ``DIR/<class>/...``.

Class folders are matched to the model's labels by name; a folder whose name is no label is an
error that lists them (a typo would otherwise silently count as wrong answers). Images are found
recursively below each class folder; unreadable ones are skipped and counted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.errors import SourceError
from edge_app.frames.geometry import fit_to_input
from edge_app.frames.sources import IMAGE_EXTS, ImageSource
from edge_app.model import LoadedModel
from edge_app.runtime import median_p95


def labelled_images(root: Path, labels: list[str], option: str = "--source") -> tuple[list[tuple[Path, int]], list[str]]:
    """(image, class index) for every image below ``root/<class>/``, and the class folders found
    (``option``: the command-line option that named ``root``, for the messages)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{option} {root}: no such folder", "give a folder with one subfolder per class (DIR/<class>/*.jpg)")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise SourceError(f"{option} {root} has no class subfolders", "lay it out as DIR/<class>/*.jpg, class names as in labels.txt")
    index = {name: i for i, name in enumerate(labels)}
    unknown = [d.name for d in folders if d.name not in index]
    if unknown:
        raise SourceError(
            f"{option} {root}: class folder(s) {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
            f"are none of the model's {len(labels)} labels ({', '.join(labels[:10])}{' ...' if len(labels) > 10 else ''})",
            "rename or remove those folders (names must match labels.txt exactly)",
        )
    items = [(f, index[d.name]) for d in folders for f in sorted(d.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_EXTS]
    if not items:
        raise SourceError(
            f"{option} {root}: no images in its class folders", f"give images with one of the extensions {', '.join(sorted(IMAGE_EXTS))}"
        )
    return items, [d.name for d in folders]


def evaluate_folder(
    model: LoadedModel,
    root: Path,
    *,
    resize: str = "crop",
    limit: int | None = None,
    option: str = "--source",
    items: list[tuple[Path, int]] | None = None,
) -> dict[str, Any]:
    """Top-1/top-5, per-class recall, the confusion matrix and per-image latency on a labelled folder
    (``items``: its :func:`labelled_images` list when the caller already has it)."""
    labels = list(model.labels)
    found = None
    if items is None:
        items, found = labelled_images(root, labels, option)
    found = found or sorted({labels[t] for _, t in items})
    if limit and limit < len(items):  # evenly spread over the (class-sorted) list: every class, not the first folders
        items = [items[int(i)] for i in np.linspace(0, len(items) - 1, limit)]
    truth_of = {str(p): t for p, t in items}
    clf = model.classifier
    h, w, c = clf.input_size
    n = len(labels)
    confusion = np.zeros((n, n), np.int64)
    top5 = 0
    read: set[str] = set()
    ms: list[float] = []
    t0 = time.perf_counter()
    for frame in ImageSource([p for p, _ in items], str(root)).frames():  # unreadable files skipped, as in `run`
        truth = truth_of[frame.name]
        read.add(frame.name)
        pixels = fit_to_input(frame.rgb, h, w, c, resize)
        t = time.perf_counter()
        scores = clf.predict(pixels)
        ms.append(1000 * (time.perf_counter() - t))
        confusion[truth, int(np.argmax(scores))] += 1
        top5 += truth in np.argsort(-scores, kind="stable")[:5]  # ties broken as the loop's top-k does
    skipped = [str(p) for p, _ in items if str(p) not in read]
    seen = int(confusion.sum())
    if not seen:
        raise SourceError(f"{option} {root}: none of its {len(items)} image(s) could be read", "check the files")
    support = confusion.sum(1)
    recall = {labels[i]: (float(confusion[i, i] / support[i]) if support[i] else None) for i in range(n)}
    return {
        "source": str(root),
        "images": seen,
        "skipped": len(skipped),
        "skipped_files": skipped[:20],
        "classes_found": found,
        "labels": labels,
        "resize": resize,
        "top1": float(np.trace(confusion) / seen),
        "top5": float(top5 / seen),
        "per_class_recall": recall,
        "confusion_matrix": confusion.tolist(),
        "latency_ms": dict(zip(("median", "p95"), map(float, median_p95(ms)))),
        "seconds": round(time.perf_counter() - t0, 2),
    }
