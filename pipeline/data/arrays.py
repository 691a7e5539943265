"""Image collections that behave like uint8 ``[N, H, W, C]`` arrays without holding a copy each.

* :class:`IndexedImages`: rows ``index`` of a *store* — an array in RAM or the decoded-image cache
  on disk (``pipeline.data.store.DiskStore``). A split, a subset or a validation hold-out is a new index, never a copy of
  the pixels.
* :class:`FileImages`: image files decoded when read (``--data-cache none``).

Both give ``len``, ``shape``, ``x[i]`` / ``x[a:b]`` / ``x[index array]`` (a real array) and
``subset(positions)``; ``pipeline.data.splits.make_dataset`` feeds either to tf.data in chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipeline.data.store import DiskStore

log = logging.getLogger("pipeline")


class IndexedImages:
    def __init__(self, store: np.ndarray | DiskStore, index: np.ndarray | None = None) -> None:
        self.store = store
        self.index = np.arange(len(store), dtype=np.int64) if index is None else np.asarray(index, np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.store.shape[1:])

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.store[self.index[key]])

    def subset(self, positions: np.ndarray) -> IndexedImages:
        return IndexedImages(self.store, self.index[positions])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out.astype(dtype) if dtype is not None else out


class FileImages:
    """Images decoded from their files when read: ``read(i)`` gives entry i's bytes, ``decode`` the
    pixels (the same function the store uses, so every mode sees the same pixels)."""

    def __init__(self, read: Callable[[int], bytes], decode: Callable[[bytes], np.ndarray], hwc: Sequence[int], index: np.ndarray) -> None:
        self.read, self.decode, self.hwc = read, decode, tuple(hwc)
        self.index = np.asarray(index, np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.hwc)

    dtype = np.dtype(np.uint8)
    ndim = 4

    def _one(self, entry: int) -> np.ndarray:
        try:
            return self.decode(self.read(int(entry)))
        except Exception as exc:  # noqa: BLE001  (changed or removed since the checking pass)
            log.warning("image %s became unreadable during training (%s); a black image stands in for it", entry, type(exc).__name__)
            return np.zeros(self.hwc, np.uint8)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._one(self.index[key])
        entries = self.index[key]
        out = np.empty((len(entries), *self.hwc), np.uint8)
        with ThreadPoolExecutor(max_workers=4) as pool:  # Pillow releases the GIL while decoding
            for i, img in enumerate(pool.map(self._one, entries)):
                out[i] = img
        return out

    def subset(self, positions: np.ndarray) -> FileImages:
        return FileImages(self.read, self.decode, self.hwc, self.index[positions])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out.astype(dtype) if dtype is not None else out
