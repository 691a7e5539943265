"""Image trees: ``train/<class>/*`` and ``test/<class>/*`` in a folder or a tarball (one wrapper
folder allowed). The class folders, sorted, are the labels.

A tree is first *listed* (``list_tree``: names and labels, and a fingerprint of the content —
every file's path, size and mtime — that keys the caches), then decoded one of two ways:

* into a *store*, one uint8 array ``[images, H, W, C]`` of every listed image (train, then
  test), written once to the cache as a raw file (``pipeline.data.store.decode_to_store``). ``--data-cache memory``
  reads it into RAM (one copy of the pixels); ``--data-cache disk`` reads rows from it as they
  are needed (``store.DiskStore``; the OS page cache keeps what it can). Later runs reuse it.
* not at all ahead of time (``--data-cache none``): each image is decoded when it is read
  (``decode``, the same function); a checking pass first finds the unreadable files (``store.find_unreadable``).

Unreadable files are skipped and counted in every mode; decoding is the same function
everywhere, so every mode sees the same pixels.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
FOLLOW_LINKS_ENV = "NIN_FOLLOW_LINKS"  # "1": list_tree follows links out of a folder tree (--follow-links sets it)


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
                if parts and len(parts) >= 2 and parts[0] in ("train", "test"):  # split/class/...: not
                    return True  # cifar-100-python/train, a file
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


def decode(blob: bytes, size: int | None, gray: bool | None = None) -> np.ndarray:
    """Decode an image to uint8 HWC: RGB, or one channel for grayscale (``gray=None``: as the file is);
    centre-crop to a square and resize to ``size`` when given."""
    from PIL import Image

    im: Image.Image  # open() gives an ImageFile; convert, crop and resize give plain Images
    with Image.open(io.BytesIO(blob)) as im:
        im.load()
        if gray is None:
            gray = im.mode in ("L", "I;16", "I", "1")
        im = im.convert("L" if gray else "RGB")
        if size is not None and im.size != (size, size):
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            # Pillow sets BILINEAR in a loop its types cannot see (Image.Resampling needs Pillow >= 9.1)
            im = im.resize((size, size), Image.BILINEAR)  # type: ignore[attr-defined]
        arr = np.asarray(im, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


@dataclass(frozen=True)
class TreeListing:
    """Every image of a tree, train entries first: ``names`` are file paths (a folder) or member
    names (an archive); ``y`` their labels; ``n_train`` how many are train."""

    src: Path
    labels: tuple[str, ...]
    names: tuple[str, ...]
    y: np.ndarray
    n_train: int
    fingerprint: str

    @property
    def archive(self) -> bool:
        return not self.src.is_dir()

    def read(self, i: int) -> bytes:
        """The bytes of entry ``i`` (folders only: an archive is read in order, see ``blobs``)."""
        return Path(self.names[i]).read_bytes()

    def blobs(self) -> Iterator[tuple[int, bytes]]:
        """(entry, bytes) for every entry; an archive is read once, front to back."""
        if not self.archive:
            for i in range(len(self.names)):
                try:
                    yield i, self.read(i)
                except OSError:  # vanished, no permission, an I/O error: unreadable, like a corrupt file
                    yield i, b""
            return
        where = {n: i for i, n in enumerate(self.names)}
        try:
            with tarfile.open(self.src) as tf:
                for m in tf:
                    entry = where.pop(m.name, None)  # pop: a repeated name (left out of the listing) fills nothing
                    fh = tf.extractfile(m) if entry is not None else None
                    if entry is not None and fh is not None:
                        yield entry, fh.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{self.src} is corrupt or truncated ({exc})", "re-pack or re-download it") from None


def list_tree(src: Path, follow_links: bool | None = None) -> TreeListing:
    """List an image tree (no decoding; an archive is read once). Raises DataError for a tree without
    classes or whose train and test class folders differ.

    In a folder, links are followed where they stay inside the tree; one that leaves it (a split or
    class folder, or an image, that is a link to elsewhere) is refused unless ``follow_links`` (None:
    the environment's NIN_FOLLOW_LINKS=1), and then said. An archive's links are never followed."""
    if follow_links is None:
        follow_links = os.environ.get(FOLLOW_LINKS_ENV, "").strip().lower() in ("1", "true", "yes")
    classes, found = _scan(src, follow_links)
    train_c, test_c = classes["train"], classes["test"]
    if not train_c:
        raise DataError(f"{src}: train/ holds no class folders", "it needs train/<class>/<image>")
    if len(train_c) < 2:
        raise DataError(
            f"{src}: only one class ({sorted(train_c)[0]}): a classifier needs at least 2 (it would score "
            "100% by answering that class every time)",
            "add a folder for each other class under train/ and test/, e.g. a 'background' class of images without the object",
        )
    odd = sorted(c for c in train_c | test_c if any(ch in c for ch in "\n\r\t") or not c.isprintable())
    if odd:
        raise DataError(
            f"{src}: class folder name(s) {odd!r} hold line breaks or control characters (labels.txt has one class per line)",
            "rename those folders",
        )
    if train_c != test_c:
        raise DataError(
            f"{src}: train and test class folders differ (only in train: {sorted(train_c - test_c) or '-'}; "
            f"only in test: {sorted(test_c - train_c) or '-'})",
            "every class needs a folder in both",
        )
    labels = tuple(sorted(train_c))
    index = {c: i for i, c in enumerate(labels)}
    entries: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    h = hashlib.sha256(f"{src.resolve()}|v2".encode())
    for split, cls, name, size, mtime in found:
        entries[split].append((name, index[cls]))
        h.update(f"|{name}|{size}|{mtime}".encode())
    if not src.is_dir():
        st = src.stat()
        h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    rows = entries["train"] + entries["test"]
    return TreeListing(
        src, labels, tuple(n for n, _ in rows), np.asarray([c for _, c in rows], np.int64), len(entries["train"]), h.hexdigest()[:16]
    )


def _links_out(src: Path, paths: list[Path], follow: bool) -> None:
    """Refuse (or, with ``follow``, say) the links among ``paths`` that lead out of the tree ``src``."""
    if not paths:
        return
    shown = ", ".join(f"{p} -> {p.resolve()}" for p in paths[:3]) + (f" (and {len(paths) - 3} more)" if len(paths) > 3 else "")
    if follow:
        log.warning("%s: following %d link(s) out of the tree (--follow-links): %s", src, len(paths), shown)
        return
    raise DataError(
        f"{src}: {len(paths)} link(s) lead out of the image tree: {shown}",
        f"copy those images into the tree, or pass --follow-links (env {FOLLOW_LINKS_ENV}=1) to read them where they are",
    )


def _scan(src: Path, follow_links: bool = False) -> tuple[dict[str, set[str]], list[tuple[str, str, str, int, int]]]:
    """The class folders per split (empty ones included) and (split, class, name, size, mtime) of every
    image-looking file, without reading any; an archive in one pass. An archive member that repeats
    an earlier name (``tar -r``) is left out: names must say which image is which."""
    classes: dict[str, set[str]] = {"train": set(), "test": set()}
    found: list[tuple[str, str, str, int, int]] = []
    if src.is_dir():
        root = src.resolve()
        out: list[Path] = []  # the outermost link of each way out: a split or class folder, or an image

        def leaves(p: Path, parent_left: bool) -> bool:
            if parent_left or p.resolve().is_relative_to(root):
                return parent_left
            out.append(p)
            return True

        for split in ("train", "test"):
            split_out = leaves(src / split, False)
            for cls_dir in sorted(p for p in (src / split).iterdir() if p.is_dir()):
                cls_out = leaves(cls_dir, split_out)
                classes[split].add(cls_dir.name)
                for f in sorted(cls_dir.iterdir()):
                    if f.suffix.lower() in IMAGE_EXTS and f.is_file():
                        leaves(f, cls_out)
                        st = f.stat()
                        found.append((split, cls_dir.name, str(f), st.st_size, st.st_mtime_ns))
        _links_out(src, out, follow_links)
        return classes, found
    seen: set[str] = set()
    unsafe: list[str] = []
    try:
        with tarfile.open(src) as tf:
            for m in tf:
                # nothing is extracted, but a link or a path leaving the tree (/, ../) is no image of it
                if m.issym() or m.islnk() or m.name.startswith("/") or ".." in Path(m.name).parts:
                    unsafe.append(m.name)
                    continue
                parts = _tree_parts(m.name)
                if not parts or len(parts) < 2:
                    continue
                if m.isdir() or len(parts) == 3:
                    classes[parts[0]].add(parts[1])
                if len(parts) == 3 and m.isfile() and Path(parts[2]).suffix.lower() in IMAGE_EXTS:
                    if m.name in seen:
                        log.warning("%s holds %s twice; using the first", src.name, m.name)
                        continue
                    seen.add(m.name)
                    found.append((parts[0], parts[1], m.name, m.size, int(m.mtime)))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{src} is corrupt or truncated ({exc})", "re-pack or re-download it") from None
    if unsafe:
        log.warning(
            "%s: left out %d member(s) that are links or paths outside the tree (e.g. %s): images must be regular files inside it",
            src.name,
            len(unsafe),
            ", ".join(map(repr, unsafe[:3])),
        )
    return classes, found


# --------------------------------------------------------------------------- the decoded store
