"""`edge-app eval`: int8 accuracy measured on the device itself, through its real runtime, delegate
and preprocessing (the camera loop's resize), on a labelled folder ``DIR/<class>/...``.

Class folders are matched to the model's labels by name; a folder whose name is no label is an
error that lists them (a typo would otherwise silently count as wrong answers). Images are found
recursively below each class folder; unreadable ones, and those above the pixel limit (read from
their headers before decoding: edge_app.frames.imagesize), are skipped and counted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.errors import SourceError
from edge_app.frames.geometry import fit_to_input
from edge_app.frames.sources import IMAGE_EXTS, ImageSource
from edge_app.model import LoadedModel
from edge_app.runtime import median_p95

log = logging.getLogger("edge_app")


def labelled_images(
    root: Path, labels: list[str], option: str = "--source", follow_links: bool = False
) -> tuple[list[tuple[Path, int]], list[str]]:
    """(image, class index) for every image below ``root/<class>/``, and the class folders found
    (``option``: the command-line option that named ``root``, for the messages). A class folder or
    image that is a link out of ``root`` is refused unless ``follow_links`` (then it is said); links
    inside it are fine, and links to folders below a class folder are not descended into."""
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
    real = root.resolve()
    items: list[tuple[Path, int]] = []
    out: list[Path] = []  # the links out of root: a class folder, or an image in one
    for d in folders:
        d_out = not d.resolve().is_relative_to(real)
        out += [d] if d_out else []
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                items.append((f, index[d.name]))
                if not d_out and not f.resolve().is_relative_to(real):
                    out.append(f)
    if out:
        shown = ", ".join(f"{p} -> {p.resolve()}" for p in out[:3]) + (f" (and {len(out) - 3} more)" if len(out) > 3 else "")
        if not follow_links:
            raise SourceError(
                f"{option} {root}: {len(out)} link(s) lead out of the folder: {shown}",
                "copy those images into it, or pass --follow-links (edge-app eval) to read them where they are",
            )
        log.warning("%s %s: following %d link(s) out of the folder (--follow-links): %s", option, root, len(out), shown)
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
    follow_links: bool = False,
    per_image: bool = False,
) -> dict[str, Any]:
    """Top-1/top-5, per-class recall, the confusion matrix and per-image latency on a labelled folder
    (``items``: its :func:`labelled_images` list when the caller already has it; ``per_image``: also
    "predictions", each image's answer, to compare two devices answer by answer)."""
    labels = list(model.labels)
    found = None
    if items is None:
        items, found = labelled_images(root, labels, option, follow_links)
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
    answers: list[tuple[str, int, int]] = []
    t0 = time.perf_counter()
    for frame in ImageSource([p for p, _ in items], str(root)).frames():  # unreadable files skipped, as in `run`
        truth = truth_of[frame.name]
        read.add(frame.name)
        pixels = fit_to_input(frame.rgb, h, w, c, resize)
        t = time.perf_counter()
        scores = clf.predict(pixels)
        ms.append(1000 * (time.perf_counter() - t))
        answer = int(np.argmax(scores))
        confusion[truth, answer] += 1
        answers.append((frame.name, truth, answer))
        top5 += truth in np.argsort(-scores, kind="stable")[:5]  # ties broken as the loop's top-k does
    skipped = [str(p) for p, _ in items if str(p) not in read]
    seen = int(confusion.sum())
    if not seen:
        raise SourceError(f"{option} {root}: none of its {len(items)} image(s) could be read", "check the files")
    support = confusion.sum(1)
    recall = {labels[i]: (float(confusion[i, i] / support[i]) if support[i] else None) for i in range(n)}
    extra = {"predictions": [_answer(f, t, a, root, labels) for f, t, a in answers]} if per_image else {}
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
        **extra,
    }


def _answer(name: str, truth: int, answer: int, root: Path, labels: list[str]) -> dict[str, Any]:
    path = Path(name)  # named from the labelled folder's top: the same on every device
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    return {"file": rel.as_posix(), "truth": labels[truth], "predicted": labels[answer]}
