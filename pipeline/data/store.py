"""The decoded-image store of an image tree (``pipeline.data.tree`` lists and decodes it): every
listed image decoded once into one uint8 array ``[images, H, W, C]`` written to the cache as a raw
file (``decode_to_store``), read into memory or row by row from disk (``DiskStore``); and, for
``--data-cache none``, the pass that finds the unreadable files first (``find_unreadable``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.fsutil import atomic_write_text
from edge_app.runtime import usable_cores

from pipeline.data.tree import TreeListing, decode
from pipeline.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreInfo:
    shape: tuple[int, int, int, int]  # images, H, W, C
    unreadable: tuple[int, ...]  # entries that could not be decoded (their slot is left black)


def probe(listing: TreeListing, size: int | None) -> tuple[int, int, int]:
    """The (H, W, C) every decoded image gets: ``size`` (or the first readable image's own size), and
    one channel only if the first readable image of every class is grayscale (a tree that mixes
    colour in becomes RGB), else three."""
    first: dict[int, np.ndarray] = {}
    for i, blob in listing.blobs():
        if int(listing.y[i]) in first:
            continue
        try:
            first[int(listing.y[i])] = decode(blob, size)
        except Exception:  # noqa: BLE001  (Pillow raises many kinds for a bad file)
            continue
        if len(first) == len(listing.labels) or first[int(listing.y[i])].shape[-1] == 3:
            break
    if not first:
        raise DataError(f"{listing.src}: no readable image", "check the files, or pass another --data-dir")
    h, w, _ = next(iter(first.values())).shape
    return h, w, (1 if all(img.shape[-1] == 1 for img in first.values()) else 3)


def _decode_all(listing: TreeListing, size: int | None, hwc: tuple[int, int, int], out: np.ndarray | DiskStore, progress: bool) -> list[int]:
    """Decode every entry into ``out`` (an array or a writable DiskStore), in parallel threads (Pillow releases
    the GIL while it decodes). Returns the unreadable entries."""
    from pipeline.progress import progress as bar

    gray = hwc[2] == 1
    bad: list[int] = []
    mismatched: list[tuple[str, tuple]] = []

    def work(item: tuple[int, bytes]) -> None:
        i, blob = item
        try:
            img = decode(blob, size, gray)
        except Exception:  # noqa: BLE001  (a corrupt file: skip and count it)
            bad.append(i)
            return
        if img.shape != hwc:
            mismatched.append((listing.names[i], img.shape))
            return
        out[i] = img

    with ThreadPoolExecutor(max_workers=usable_cores()) as pool:
        window = []
        for item in bar(listing.blobs(), total=len(listing.names), desc=f"decoding {listing.src.name}", disable=not progress):
            window.append(pool.submit(work, item))
            if len(window) >= 256:  # bounded: a tree larger than memory never piles up in the queue
                for f in window:
                    f.result()
                window = []
                if mismatched:  # say so now, not after decoding the rest of a large tree
                    break
        for f in window:
            f.result()
    if mismatched:
        name, shape = mismatched[0]
        raise DataError(
            f"{listing.src}: images have different sizes ({Path(name).name} is {shape[1]}x{shape[0]}, the first is {hwc[1]}x{hwc[0]})",
            "pass --input-size N to resize them",
        )
    return sorted(bad)


def decode_to_store(
    listing: TreeListing, size: int | None, cache_dir: Path, *, in_memory: bool, progress: bool = True, hwc: tuple[int, int, int] | None = None
) -> tuple[np.ndarray | DiskStore, StoreInfo]:
    """Every image of the tree decoded into one uint8 ``[images, H, W, C]`` store, cached as
    ``cache_dir/<name>-<key>.u8`` (written under a temporary name, then renamed; its ``.json`` says
    what it holds). ``in_memory``: the store is an array in RAM (decoded straight into it, or read
    back from the cache); else a :class:`DiskStore` on the cache file, decoded into it with
    ``pwrite`` — neither way maps the file, so this process's memory does not grow with the tree."""
    key = hashlib.sha256(f"{listing.fingerprint}|{size}".encode()).hexdigest()[:16]
    data = cache_dir / f"{listing.src.name.split('.')[0]}-{key}.u8"
    meta = data.with_suffix(".json")
    info = _read_meta(meta, data)
    if info is not None:
        return (np.fromfile(data, np.uint8).reshape(info.shape) if in_memory else DiskStore(data, info.shape)), info
    hwc = probe(listing, size) if hwc is None else hwc  # the caller may have probed already (it reads the tree)
    shape = (len(listing.names), *hwc)
    tmp = data.with_name(f".{data.name}.{os.getpid()}.tmp")
    store: np.ndarray | DiskStore
    if in_memory:
        store = np.zeros(shape, np.uint8)
        bad = _decode_all(listing, size, hwc, store, progress)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            store.tofile(tmp)
            os.replace(tmp, data)
        except OSError as exc:
            log.warning("could not write the decoded-image cache in %s (%s); continuing without it", cache_dir, exc)
            return store, StoreInfo(shape, tuple(bad))
        finally:
            Path(tmp).unlink(missing_ok=True)
    else:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.truncate(int(np.prod(shape)))
            writer = DiskStore(tmp, shape, writable=True)
            try:
                bad = _decode_all(listing, size, hwc, writer, progress)
            finally:
                writer.close()
            os.replace(tmp, data)
        except OSError as exc:
            raise DataError(
                f"cannot write the decoded-image cache in {cache_dir} ({exc.strerror or exc})",
                "set NIN_CACHE_DIR to a writable folder with room, or use --data-cache memory",
            ) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        store = DiskStore(data, shape)
    info = StoreInfo(shape, tuple(bad))
    try:
        atomic_write_text(meta, json.dumps({"shape": list(shape), "unreadable": list(bad), "src": str(listing.src)}) + "\n")
    except OSError as exc:  # the images are decoded: go on; the next run decodes again
        log.warning("could not record the decoded-image cache %s (%s); it will be decoded again next time", meta, exc)
    return store, info


class DiskStore:
    """The decoded-image cache file as a read-only ``[images, H, W, C]`` uint8 array-like: rows are
    copied in with ``preadv`` (never mapped, so they do not count against this process's memory;
    the OS page cache keeps what it can). ``writable``: rows are written with ``pwrite``."""

    def __init__(self, path: Path, shape: tuple[int, ...], writable: bool = False) -> None:
        self.path, self.shape = Path(path), tuple(int(v) for v in shape)
        self.row = int(np.prod(self.shape[1:]))
        self._fd = -1
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        flat = rows.reshape(-1)
        out = np.empty((len(flat), *self.shape[1:]), np.uint8)
        for k, r in enumerate(flat):
            if os.preadv(self._fd, [memoryview(out[k]).cast("B")], int(r) * self.row) != self.row:
                raise DataError(f"{self.path} is shorter than its index says", "delete it; it is decoded again")
        return out.reshape(*rows.shape, *self.shape[1:])

    def __setitem__(self, row: int, img: np.ndarray) -> None:
        os.pwrite(self._fd, np.ascontiguousarray(img, np.uint8).tobytes(), int(row) * self.row)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def _read_meta(meta: Path, data: Path) -> StoreInfo | None:
    if not (meta.is_file() and data.is_file()):
        return None
    try:
        d = json.loads(meta.read_text())
        info = StoreInfo(tuple(int(v) for v in d["shape"]), tuple(int(v) for v in d["unreadable"]))  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError):
        return None
    if data.stat().st_size != int(np.prod(info.shape)):
        log.warning("decoded-image cache %s is incomplete; decoding again", data)
        return None
    return info


def find_unreadable(
    listing: TreeListing, size: int | None, hwc: tuple[int, int, int], cache_dir: Path, progress: bool = True
) -> tuple[int, ...]:
    """The entries that cannot be decoded, found by decoding each once (for --data-cache none, which
    decodes while training); remembered in the cache by the tree's fingerprint. An image of another
    size than ``hwc`` (without --input-size) is an error, as when decoding into the store."""
    from pipeline.progress import progress as progress_bar

    memo = cache_dir / f"{listing.src.name.split('.')[0]}-{listing.fingerprint}-{size}-unreadable.json"
    try:
        return tuple(json.loads(memo.read_text()))
    except (OSError, ValueError):
        pass
    gray = hwc[2] == 1

    def check(i: int) -> tuple[int, tuple | None]:
        try:
            return i, decode(listing.read(i), size, gray).shape
        except Exception:  # noqa: BLE001  (a corrupt file: skip and count it)
            return i, None

    shapes: list[tuple[int, tuple | None]] = []
    with (
        ThreadPoolExecutor(max_workers=usable_cores()) as pool,
        progress_bar(total=len(listing.names), desc=f"checking {listing.src.name}", disable=not progress) as bar,
    ):
        for start in range(0, len(listing.names), 1024):  # bounded, as in _decode_all
            shapes += pool.map(check, range(start, min(start + 1024, len(listing.names))))
            bar.update(len(shapes) - bar.n)
    other = [(i, shape) for i, shape in shapes if shape is not None and shape != tuple(hwc)]
    if other:
        i, shape = other[0]
        raise DataError(
            f"{listing.src}: images have different sizes ({Path(listing.names[i]).name} is "
            f"{shape[1]}x{shape[0]}, the first is {hwc[1]}x{hwc[0]})",
            "pass --input-size N to resize them",
        )
    bad = tuple(i for i, shape in shapes if shape is None)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo, json.dumps(list(bad)))
    except OSError:
        pass
    return bad
