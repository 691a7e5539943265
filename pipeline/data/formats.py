"""Datasets on disk: find them (offline first), read every known format, decode image trees once and cache them.

Where data comes from, in order:
1. ``--data-dir`` (or ``NIN_DATA_DIR``): a directory or an archive file holding the official
   archive (``cifar-10-python.tar.gz``, ``cifar-10-batches-py/``, ``mnist.npz``, ...), the
   Keras cache layout, or an image tree ``train/<class>/*``, ``test/<class>/*`` (also as .tar.gz);
2. the Keras cache (``~/.keras/datasets``);
3. Keras' own download into that cache. Offline with nothing local: a :class:`DataError`
   saying which files to put where.

All images are held as uint8 NHWC arrays (``RawData``); ``pipeline.data.splits`` splits them and feeds tf.data.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np

from pipeline.data.store import decode_to_store
from pipeline.data.tree import is_image_tree_source, list_tree, looks_like_image_tree
from pipeline.errors import DataError

log = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist", "folder")


class _Layout(TypedDict, total=False):
    dirs: list[str]
    archives: list[str]
    files: list[str]
    idx: list[str]
    image_trees: list[str]
    hint: str


# What each built-in dataset looks like on disk: official names and Keras cache names.
_KNOWN: dict[str, _Layout] = {
    "cifar10": {
        "dirs": ["cifar-10-batches-py"],
        "archives": ["cifar-10-python.tar.gz"],
        "image_trees": ["cifar10*.tar.gz", "cifar-10*.tar.gz", "cifar10*", "cifar-10-images*"],
        "hint": "cifar-10-python.tar.gz (or its cifar-10-batches-py/ folder), or an image tree such as cifar10-jpg.tar.gz",
    },
    "cifar100": {
        "dirs": ["cifar-100-python"],
        "archives": ["cifar-100-python.tar.gz"],
        "image_trees": ["cifar100*.tar.gz", "cifar-100*.tar.gz"],
        "hint": "cifar-100-python.tar.gz (or its cifar-100-python/ folder)",
    },
    "mnist": {"files": ["mnist.npz"], "image_trees": ["mnist*.tar.gz"], "hint": "mnist.npz"},
    "fashion_mnist": {
        "dirs": ["fashion-mnist"],
        "idx": ["train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"],
        "image_trees": ["fashion*.tar.gz"],
        "hint": "the four files train-{images-idx3,labels-idx1}-ubyte.gz and t10k-{images-idx3,labels-idx1}-ubyte.gz (a fashion-mnist/ folder)",
    },
}
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
# Horizontal flips change what a digit means; they are safe for objects and clothes.
NO_FLIP = {"mnist"}
# The images (H, W, C) each built-in dataset is: data of another shape under its name is another dataset.
DATASET_SHAPES = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1)}


# --------------------------------------------------------------------------- raw sources


@dataclass
class RawData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: tuple[str, ...]
    source: str
    skipped: int = 0


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def nin_cache_dir() -> Path:
    return Path(os.environ.get("NIN_CACHE_DIR", Path.home() / ".cache" / "nin-pipeline"))


def _is_archive(p: Path) -> bool:
    return p.is_file() and (p.name.endswith((".tar.gz", ".tgz", ".tar")))


def _find_in_dir(dataset: str, d: Path) -> Path | None:
    """A known layout for ``dataset`` directly inside ``d`` (or ``d`` itself)."""
    known = _KNOWN.get(dataset, {})
    if looks_like_image_tree(d):
        return d
    for name in known.get("dirs", []):
        if (d / name).is_dir():
            return d / name
    for name in known.get("archives", []) + known.get("files", []):
        if (d / name).is_file():
            return d / name
    if dataset == "cifar10" and (d / "data_batch_1").is_file():
        return d
    if dataset == "cifar100" and (d / "train").is_file() and (d / "meta").is_file():
        return d
    if known.get("idx") and all((d / n).is_file() for n in known["idx"]):
        return d
    for pattern in known.get("image_trees", []):
        for cand in sorted(d.glob(pattern)):
            if _is_archive(cand) or (cand.is_dir() and looks_like_image_tree(cand)):
                return cand
    return None


def resolve_source(dataset: str, data_dir: str | os.PathLike | None) -> Path | None:
    """Where to read ``dataset`` from; None means 'let Keras download it'."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    data_dir = data_dir or os.environ.get("NIN_DATA_DIR") or None
    if data_dir:
        p = Path(data_dir).expanduser()
        if not p.exists():
            raise DataError(f"--data-dir {p} does not exist; point it at a folder or archive holding {dataset}")
        if p.is_file():
            if not _is_archive(p) and not p.name.endswith(".npz"):
                raise DataError(f"--data-dir {p} is a file but not a .tar.gz, .tar or .npz archive")
            return p
        found = _find_in_dir(dataset, p)
        if found is None:
            raise DataError(_missing_message(dataset, where=str(p)))
        return found
    if dataset == "folder":
        raise DataError("--dataset folder needs --data-dir: a folder (or .tar.gz) with train/<class>/* and test/<class>/*")
    cache = keras_cache_dir()
    if cache.is_dir():
        return _find_in_dir(dataset, cache)
    return None


def _missing_message(dataset: str, where: str) -> str:
    if dataset == "folder":
        return f"{where} holds no image tree: it needs train/<class>/<image> and test/<class>/<image>"
    hint = _KNOWN[dataset]["hint"]
    return (
        f"no {dataset} data found in {where}. Put {hint} there "
        f"(or in {keras_cache_dir()}), or pass --data-dir with the folder or archive that holds it"
    )


def load_raw(dataset: str, data_dir: str | os.PathLike | None, input_size: int | None = None) -> RawData:
    src = resolve_source(dataset, data_dir)
    if src is None:
        return _keras_download(dataset)
    if is_image_tree_source(src):
        return _load_image_tree_cached(src, input_size)
    if dataset in ("cifar10", "cifar100"):
        return _load_cifar(src, dataset)
    if dataset == "mnist":
        return _load_mnist_npz(src)
    if dataset == "fashion_mnist":
        return _load_idx_dir(src)
    raise DataError(_missing_message(dataset, str(src)))


def _keras_download(dataset: str) -> RawData:
    if dataset == "folder":
        raise DataError("--dataset folder needs --data-dir")
    import tf_keras as keras

    loader = {
        "cifar10": keras.datasets.cifar10,
        "cifar100": keras.datasets.cifar100,
        "mnist": keras.datasets.mnist,
        "fashion_mnist": keras.datasets.fashion_mnist,
    }[dataset]
    try:
        (xtr, ytr), (xte, yte) = loader.load_data()
    except Exception as exc:  # urllib raises many kinds; all mean "could not fetch"
        raise DataError(
            f"could not download {dataset} ({type(exc).__name__}: {exc}). Offline? " + _missing_message(dataset, where=str(keras_cache_dir()))
        ) from None
    labels = {"cifar10": CIFAR10_LABELS, "fashion_mnist": FASHION_LABELS}.get(dataset, tuple(str(i) for i in range(int(ytr.max()) + 1)))
    return RawData(
        _nhwc(xtr),
        ytr.reshape(-1).astype(np.int64),
        _nhwc(xte),
        yte.reshape(-1).astype(np.int64),
        tuple(labels),
        f"keras download ({keras_cache_dir()})",
    )


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x[..., None] if x.ndim == 3 else x


# ---- CIFAR pickles (directory or the official tarball)


def _cifar_members(src: Path) -> Iterator[tuple[str, bytes]]:
    if src.is_dir():
        for p in sorted(src.iterdir()):
            if p.is_file():
                yield p.name, p.read_bytes()
        return
    try:
        with tarfile.open(src) as tf:
            for m in tf:
                if m.isfile():
                    fh = tf.extractfile(m)
                    if fh is not None:
                        yield Path(m.name).name, fh.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{src} is corrupt or truncated ({exc}); re-download it") from None


# What a CIFAR batch may hold: dicts, lists, bytes, str, numbers and numpy arrays. A pickle can name
# any importable callable and have it called (os.system, say), so everything else is refused.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}
# md5 of the official archives, as published on https://www.cs.toronto.edu/~kriz/cifar.html
_OFFICIAL_MD5 = {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a", "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks to run {module}.{name}, which a CIFAR batch never does")


def safe_unpickle(blob: bytes):
    """A CIFAR batch's dict, unpickled with only the types such a batch holds (see ``_PICKLE_ALLOWED``)."""
    import io

    return _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()


def _check_official_checksum(src: Path) -> None:
    want = _OFFICIAL_MD5.get(src.name)
    if want is None or not src.is_file():
        return
    h = hashlib.md5(usedforsecurity=False)
    with open(src, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != want:
        log.warning(
            "%s differs from the published archive (md5 %s, expected %s): it was changed or is not the "
            "official file; re-download it if that is not what you meant",
            src,
            h.hexdigest(),
            want,
        )


def _load_cifar(src: Path, dataset: str) -> RawData:
    files = {}
    _check_official_checksum(src)
    for name, blob in _cifar_members(src):
        if name.startswith(("data_batch_", "test_batch", "batches.meta")) or name in ("train", "test", "meta"):
            try:
                files[name] = safe_unpickle(blob)
            except Exception as exc:
                raise DataError(f"{src}: {name} is not a CIFAR pickle ({exc}); re-download the archive") from None
            if not isinstance(files[name], dict):
                raise DataError(
                    f"{src}: {name} is not a CIFAR pickle (it holds a {type(files[name]).__name__}, not a dict); re-download the archive"
                )
    key = b"labels" if dataset == "cifar10" else b"fine_labels"
    if dataset == "cifar10":
        train_parts = [files[k] for k in sorted(files) if k.startswith("data_batch_")]
        test_parts = [files["test_batch"]] if "test_batch" in files else []
        meta = files.get("batches.meta", {})
        labels = tuple(v.decode() for v in meta.get(b"label_names", [])) or CIFAR10_LABELS
    else:
        train_parts = [files["train"]] if "train" in files else []
        test_parts = [files["test"]] if "test" in files else []
        labels = tuple(v.decode() for v in files.get("meta", {}).get(b"fine_label_names", []))
    if not train_parts or not test_parts:
        raise DataError(f"{src} does not hold the {dataset} train and test batches; " + _missing_message(dataset, str(src.parent)))

    def stack(parts):
        x = np.concatenate([np.asarray(p[b"data"], np.uint8) for p in parts]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(p[key]) for p in parts]).astype(np.int64)
        return x.transpose(0, 2, 3, 1).copy(), y

    xtr, ytr = stack(train_parts)
    xte, yte = stack(test_parts)
    if not labels:
        labels = tuple(str(i) for i in range(int(ytr.max()) + 1))
    return RawData(xtr, ytr, xte, yte, labels, str(src))


def _load_mnist_npz(src: Path) -> RawData:
    try:
        with np.load(src) as z:
            xtr, ytr, xte, yte = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{src} is not a Keras mnist.npz ({exc}); re-download it") from None
    labels = tuple(str(i) for i in range(10))
    return RawData(_nhwc(xtr), ytr.astype(np.int64), _nhwc(xte), yte.astype(np.int64), labels, str(src))


def _read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (gzipped). The header's dimensions are checked against a bound and
    against what the file can hold (deflate packs at most ~1032:1) before anything is allocated, and
    the data is read in chunks: a header that claims 2**31 items is an error, not a 2 GB allocation."""
    import math
    import zlib

    max_bytes, chunk = 2**31 - 1, 1 << 22
    try:
        with gzip.open(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[:3] != b"\0\0\x08" or not 1 <= head[3] <= 4:
                raise DataError(f"{path} is not an idx file of unsigned bytes (its header is {head.hex() or 'empty'})", "re-download it")
            raw_dims = fh.read(4 * head[3])
            dims = [int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(head[3])]
            n = math.prod(dims)
            if len(raw_dims) < 4 * head[3]:
                raise DataError(f"{path} is cut short in its header", "re-download it")
            if n > max_bytes or n > 1100 * path.stat().st_size:
                raise DataError(f"{path}: its header claims {' x '.join(map(str, dims))} items, more than the file can hold", "re-download it")
            parts, got = [], 0
            while got <= n and (part := fh.read(min(chunk, n + 1 - got))):
                parts.append(part)
                got += len(part)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is not a readable .gz file ({exc}); re-download it") from None
    if got != n:
        held = "more" if got > n else got
        raise DataError(f"{path}: its header says {' x '.join(map(str, dims))} = {n} bytes, the file holds {held}", "re-download it")
    return np.frombuffer(b"".join(parts), np.uint8).reshape(dims)


def _load_idx_dir(src: Path) -> RawData:
    n = _KNOWN["fashion_mnist"]["idx"]
    ytr, xtr, yte, xte = (_read_idx(src / f) for f in n)
    return RawData(_nhwc(xtr), ytr.astype(np.int64), _nhwc(xte), yte.astype(np.int64), FASHION_LABELS, str(src))


def _load_image_tree_cached(src: Path, input_size: int | None) -> RawData:
    """Decode an image tree once (the decoded-image cache, see ``pipeline.data.store.decode_to_store``);
    later runs read it back. Unreadable files are left out and counted."""
    listing = list_tree(src)
    store, info = decode_to_store(listing, input_size, nin_cache_dir(), in_memory=True)  # a cache it cannot write: a warning
    good = np.setdiff1d(np.arange(len(listing.names)), info.unreadable)
    tr, te = good[good < listing.n_train], good[good >= listing.n_train]
    if info.unreadable:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(info.unreadable), ", ".join(listing.names[i] for i in info.unreadable[:3]))
    for split, idx in (("train", tr), ("test", te)):
        empty = [listing.labels[i] for i in np.flatnonzero(np.bincount(listing.y[idx], minlength=len(listing.labels)) == 0)]
        if empty:
            raise DataError(f"{src}: {split}/ has no readable images for class(es) {', '.join(empty)}", "add images or remove the class folder")
    return RawData(np.asarray(store[tr]), listing.y[tr], np.asarray(store[te]), listing.y[te], listing.labels, str(src), len(info.unreadable))
