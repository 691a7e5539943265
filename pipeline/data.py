"""Datasets: find them on disk (offline first), decode once, cache, split, and feed tf.data.

Where data comes from, in order:
1. ``--data-dir`` (or ``NIN_DATA_DIR``): a directory or an archive file holding the official
   archive (``cifar-10-python.tar.gz``, ``cifar-10-batches-py/``, ``mnist.npz``, ...), the
   Keras cache layout, or an image tree ``train/<class>/*``, ``test/<class>/*`` (also as .tar.gz);
2. the Keras cache (``~/.keras/datasets``);
3. Keras' own download into that cache. Offline with nothing local: a :class:`DataError`
   saying which files to put where.

All images are held as uint8 NHWC arrays; the float conversion happens in tf.data.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edge_app.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist", "folder")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

# What each built-in dataset looks like on disk: official names and Keras cache names.
_KNOWN = {
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
        "idx": ["train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"],
        "image_trees": ["fashion*.tar.gz"],
        "hint": "the four files train-{images-idx3,labels-idx1}-ubyte.gz and t10k-{images-idx3,labels-idx1}-ubyte.gz (a fashion-mnist/ folder)",
    },
}
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
# Horizontal flips change what a digit means; they are safe for objects and clothes.
NO_FLIP = {"mnist"}


class DataError(Exception):
    """A dataset problem the user can fix: says what is wrong and what to do."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"
    data_dir: str | None = None
    input_size: int | None = None  # resize images to this square size (image trees); None: keep
    val_fraction: float = 0.1
    limit_train: int | None = None
    limit_test: int | None = None
    seed: int = 0


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: tuple[str, ...]
    source: str
    skipped: int = 0
    hflip: bool = True

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.labels)


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
    if _looks_like_image_tree(d):
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
            if _is_archive(cand) or (cand.is_dir() and _looks_like_image_tree(cand)):
                return cand
    return None


def _looks_like_image_tree(d: Path) -> bool:
    return d.is_dir() and (d / "train").is_dir() and (d / "test").is_dir()


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
    if _is_image_tree_source(src):
        return _load_image_tree_cached(src, input_size)
    if dataset in ("cifar10", "cifar100"):
        return _load_cifar(src, dataset)
    if dataset == "mnist":
        return _load_mnist_npz(src)
    if dataset == "fashion_mnist":
        return _load_idx_dir(src)
    raise DataError(_missing_message(dataset, str(src)))


def _is_image_tree_source(src: Path) -> bool:
    if src.is_dir():
        return _looks_like_image_tree(src)
    if not _is_archive(src):
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


def _keras_download(dataset: str) -> RawData:
    if dataset == "folder":
        raise DataError("--dataset folder needs --data-dir")
    import tf_keras as keras

    loader = {
        "cifar10": keras.datasets.cifar10, "cifar100": keras.datasets.cifar100,
        "mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist,
    }[dataset]
    try:
        (xtr, ytr), (xte, yte) = loader.load_data()
    except Exception as exc:  # urllib raises many kinds; all mean "could not fetch"
        raise DataError(
            f"could not download {dataset} ({type(exc).__name__}: {exc}). Offline? "
            + _missing_message(dataset, where=str(keras_cache_dir()))
        ) from None
    labels = {"cifar10": CIFAR10_LABELS, "fashion_mnist": FASHION_LABELS}.get(
        dataset, tuple(str(i) for i in range(int(ytr.max()) + 1)))
    return RawData(_nhwc(xtr), ytr.reshape(-1).astype(np.int64), _nhwc(xte), yte.reshape(-1).astype(np.int64),
                   tuple(labels), f"keras download ({keras_cache_dir()})")


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


def _load_cifar(src: Path, dataset: str) -> RawData:
    files = {}
    for name, blob in _cifar_members(src):
        if name.startswith(("data_batch_", "test_batch", "batches.meta")) or name in ("train", "test", "meta"):
            try:
                files[name] = pickle.loads(blob, encoding="bytes")
            except Exception as exc:
                raise DataError(f"{src}: {name} is not a CIFAR pickle ({exc}); re-download the archive") from None
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
        raise DataError(f"{src} does not hold the {dataset} train and test batches; "
                        + _missing_message(dataset, str(src.parent)))

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
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .gz file ({exc}); re-download it") from None
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_idx_dir(src: Path) -> RawData:
    n = _KNOWN["fashion_mnist"]["idx"]
    ytr, xtr, yte, xte = (_read_idx(src / f) for f in n)
    return RawData(_nhwc(xtr), ytr.astype(np.int64), _nhwc(xte), yte.astype(np.int64), FASHION_LABELS, str(src))


# ---- image trees: train/<class>/*, test/<class>/* in a folder or a tarball

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


def load_image_tree(src: Path, input_size: int | None = None, progress: bool = True) -> RawData:
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
    return RawData(
        np.stack(xs["train"]), np.asarray(ys["train"], np.int64),
        np.stack(xs["test"]), np.asarray(ys["test"], np.int64),
        labels, str(src), skipped=len(skipped),
    )


def _load_image_tree_cached(src: Path, input_size: int | None) -> RawData:
    """Decode an image tree once; later runs read a .npz from the cache."""
    st = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}|{input_size}|v1".encode()).hexdigest()[:16]
    cache = nin_cache_dir() / f"{src.name.split('.')[0]}-{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return RawData(z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                               tuple(str(v) for v in z["labels"]), str(src), int(z["skipped"]))
        except Exception:
            log.warning("decoded-image cache %s is unreadable; decoding again", cache)
    raw = load_image_tree(src, input_size)
    buf = io.BytesIO()
    np.savez(buf, x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_test, y_test=raw.y_test,
             labels=np.asarray(raw.labels), skipped=np.asarray(raw.skipped))
    try:
        atomic_write_bytes(cache, buf.getvalue())
    except OSError as exc:
        log.warning("could not write the decoded-image cache %s (%s); continuing without it", cache, exc)
    return raw


# --------------------------------------------------------------------------- splits

def stratified_indices(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices with every class represented in proportion (at least one each when n allows)."""
    if n >= len(y):
        return rng.permutation(len(y))
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts / counts.sum() * n).astype(int)
    quota = np.maximum(quota, 1 if n >= len(classes) else 0)
    # hand out what flooring left over, largest classes first
    for i in np.argsort(-counts)[: max(0, n - int(quota.sum()))]:
        quota[i] += 1
    picks = [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)]
    return rng.permutation(np.concatenate(picks))[:n]


def make_splits(cfg: DataConfig, progress: bool = True) -> Splits:
    """Load the dataset and carve train / validation (held out of train) / test."""
    raw = load_raw(cfg.dataset, cfg.data_dir, cfg.input_size)
    if raw.x_train.shape[1:] != raw.x_test.shape[1:]:
        raise DataError(f"train images are {raw.x_train.shape[1:]} but test images {raw.x_test.shape[1:]}; "
                        "pass --input-size N to resize both")
    rng = np.random.default_rng(cfg.seed)
    xtr, ytr, xte, yte = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if cfg.input_size and xtr.shape[1:3] != (cfg.input_size, cfg.input_size):
        xtr, xte = _resize_all(xtr, cfg.input_size), _resize_all(xte, cfg.input_size)
    if cfg.limit_train:
        idx = stratified_indices(ytr, cfg.limit_train, rng)
        xtr, ytr = xtr[idx], ytr[idx]
    if cfg.limit_test:
        idx = stratified_indices(yte, cfg.limit_test, rng)
        xte, yte = xte[idx], yte[idx]
    n_val = int(round(len(ytr) * cfg.val_fraction))
    if n_val:
        val_idx = stratified_indices(ytr, n_val, rng)
        mask = np.ones(len(ytr), bool)
        mask[val_idx] = False
        xva, yva = xtr[val_idx], ytr[val_idx]
        xtr, ytr = xtr[mask], ytr[mask]
    else:
        xva, yva = xtr[:0], ytr[:0]
    return Splits(xtr, ytr, xva, yva, xte, yte, raw.labels, raw.source, raw.skipped,
                  hflip=cfg.dataset not in NO_FLIP)


def _resize_all(x: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    out = []
    for img in x:
        im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        arr = np.asarray(im.resize((size, size), Image.BILINEAR), np.uint8)
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return np.stack(out)


# --------------------------------------------------------------------------- tf.data

def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, training: bool, hflip: bool = True,
                 translate: bool = True, seed: int = 0):
    """uint8 arrays -> a batched, prefetched tf.data pipeline of float [0, 1] images.

    The arrays are already decoded in memory (decode once), so the pipeline caches
    the uint8 tensors, shuffles each epoch, and applies the paper's augmentation
    (random horizontal flips and translations of up to 1/8 of the side, by
    reflect-padding and a random crop) in parallel with training.
    """
    import tensorflow as tf

    h, w, c = x.shape[1:]
    pad_h, pad_w = max(1, h // 8), max(1, w // 8)
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32))).cache()
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)

        def augment(img, label):
            if hflip:
                img = tf.image.random_flip_left_right(img)
            if translate:
                img = tf.pad(img, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode="REFLECT")
                img = tf.image.random_crop(img, [h, w, c])
            return img, label

        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def representative_images(x: np.ndarray, y: np.ndarray, n: int = 256, seed: int = 0) -> np.ndarray:
    """A stratified sample of training images (uint8) for calibrating post-training quantisation."""
    idx = stratified_indices(y, min(n, len(y)), np.random.default_rng(seed))
    return x[idx]
