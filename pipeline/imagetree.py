"""Image trees: ``train/<class>/*`` and ``test/<class>/*`` in a folder or a tarball (one wrapper
folder allowed), decoded to uint8 arrays. The class folders, sorted, are the labels."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def looks_like_image_tree(d: Path) -> bool:
    return d.is_dir() and (d / "train").is_dir() and (d / "test").is_dir()


def is_image_tree_source(src: Path) -> bool:
    if src.is_dir():
        return looks_like_image_tree(src)
    if not (src.is_file() and src.name.endswith((".tar.gz", ".tgz", ".tar"))):
        return False
    try:
        with tarfile.open(src) as tf:
            for m in tf:
                parts = _tree_parts(m.name)
                if parts and parts[0] in ("train", "test"):
                    return True
                if m.name.count("/") > 3:
                    break
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{src} is not a readable archive ({exc}); re-download or re-pack it") from None
    return False


def _tree_parts(name: str) -> list[str] | None:
    """Path parts from the split folder on ('train', 'cat', 'x.jpg'), allowing one wrapper folder."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if len(parts) >= 1 and parts[0] in ("train", "test"):
        return parts
    if len(parts) >= 2 and parts[1] in ("train", "test"):
        return parts[1:]
    return None


def _iter_tree(src: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """(split, class, name, bytes) for every image-looking file."""
    if src.is_dir():
        for split in ("train", "test"):
            root = src / split
            for cls_dir in sorted(p for p in root.iterdir() if p.is_dir()):
                for f in sorted(cls_dir.iterdir()):
                    if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                        yield split, cls_dir.name, f.name, f.read_bytes()
        return
    try:
        with tarfile.open(src) as tf:
            for m in tf:
                parts = _tree_parts(m.name)
                if not parts or len(parts) != 3:
                    continue
                if m.isdir() or Path(parts[2]).suffix.lower() not in IMAGE_EXTS:
                    continue
                fh = tf.extractfile(m)
                if fh is not None:
                    yield parts[0], parts[1], parts[2], fh.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{src} is corrupt or truncated ({exc}); re-pack or re-download it") from None


def _tree_classes(src: Path) -> dict[str, set[str]]:
    """Class folders per split, including empty ones (which _iter_tree cannot see)."""
    out: dict[str, set[str]] = {"train": set(), "test": set()}
    if src.is_dir():
        for split in out:
            out[split] = {p.name for p in (src / split).iterdir() if p.is_dir()}
        return out
    try:
        with tarfile.open(src) as tf:
            for m in tf:
                parts = _tree_parts(m.name)
                if parts and len(parts) >= 2 and (m.isdir() or len(parts) == 3):
                    out[parts[0]].add(parts[1])
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{src} is corrupt or truncated ({exc}); re-pack or re-download it") from None
    return out


def _decode(blob: bytes, size: int | None) -> np.ndarray:
    """Decode an image to uint8 HWC (RGB, or 1 channel for grayscale); centre-crop and resize to size."""
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        im.load()
        im = im.convert("L" if im.mode in ("L", "I;16", "I", "1") else "RGB")
        if size is not None and im.size != (size, size):
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            im = im.resize((size, size), Image.BILINEAR)
        arr = np.asarray(im, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def load_image_tree(src: Path, input_size: int | None = None, progress: bool = True):
    """Decode every image: (x_train, y_train, x_test, y_test, labels, skipped count); labels are the
    class folders in sorted order. Unreadable files are skipped and counted."""
    classes = _tree_classes(src)
    train_c, test_c = classes["train"], classes["test"]
    if not train_c:
        raise DataError(f"{src}: train/ holds no class folders; it needs train/<class>/<image>")
    if train_c != test_c:
        only_train = sorted(train_c - test_c)
        only_test = sorted(test_c - train_c)
        raise DataError(
            f"{src}: train and test class folders differ (only in train: {only_train or '-'}; "
            f"only in test: {only_test or '-'}); every class needs a folder in both"
        )
    labels = tuple(sorted(train_c))
    index = {c: i for i, c in enumerate(labels)}
    xs: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    ys: dict[str, list[int]] = {"train": [], "test": []}
    skipped: list[str] = []
    shapes: set[tuple[int, ...]] = set()
    from tqdm import tqdm

    for split, cls, name, blob in tqdm(_iter_tree(src), desc=f"decoding {src.name}", unit="img",
                                       disable=not progress, mininterval=1.0):
        try:
            img = _decode(blob, input_size)
        except Exception:  # Pillow raises many types for a bad file; all mean "skip it"
            skipped.append(f"{split}/{cls}/{name}")
            continue
        xs[split].append(img)
        ys[split].append(index[cls])
        shapes.add(img.shape[:2])
    if skipped:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(skipped), ", ".join(skipped[:3]))
    for split in ("train", "test"):
        counts = np.bincount(np.asarray(ys[split], np.int64), minlength=len(labels))
        empty = [labels[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise DataError(f"{src}: {split}/ has no readable images for class(es) {', '.join(empty)}")
    if len(shapes) > 1:
        raise DataError(
            f"{src}: images have different sizes ({sorted(shapes)[:3]} ...); pass --input-size N to resize them"
        )
    # Mixed grayscale and colour: promote everything to RGB.
    chans = {x.shape[-1] for s in xs for x in xs[s]}
    if len(chans) > 1:
        for s in xs:
            xs[s] = [np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x for x in xs[s]]
    return (np.stack(xs["train"]), np.asarray(ys["train"], np.int64), np.stack(xs["test"]),
            np.asarray(ys["test"], np.int64), labels, len(skipped))
