"""Training data: the train / validation / test splits of a dataset, and tf.data pipelines over them.

``pipeline.datasets`` finds and reads the raw images; this module carves the splits (the
validation split is held out of train; the test split is touched only by the final
evaluation) and feeds them to Keras. Images stay uint8 NHWC; the float conversion happens in tf.data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .datasets import NO_FLIP, RawData, load_raw
from .errors import DataError


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
class Splits(RawData):
    """The dataset's arrays with the validation split taken out of train (``x_train`` no longer
    holds the ``x_val`` images)."""

    x_val: np.ndarray = field(kw_only=True)
    y_val: np.ndarray = field(kw_only=True)
    hflip: bool = field(default=True, kw_only=True)  # horizontal flips keep the meaning (not for digits)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.labels)


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
    return Splits(xtr, ytr, xte, yte, raw.labels, raw.source, raw.skipped, x_val=xva, y_val=yva,
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
