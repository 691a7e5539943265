"""Training data: the train / validation / test splits of a dataset, and tf.data pipelines over them.

``pipeline.data.formats`` finds and reads the raw images; this module carves the splits (the
validation split is held out of train; the test split is touched only by the final
evaluation) and feeds them to Keras. Images stay uint8 NHWC; the float conversion happens in tf.data.

Image trees are held one of three ways (``--data-cache``): ``memory`` — the decoded pixels once
in RAM; ``disk`` — the decoded-image cache on disk, read in chunks; ``none`` — decoded from the files
as they are read. ``auto`` (the default) takes ``memory`` when the decoded images fit the
memory budget (``--memory-budget``, default a quarter of this machine's RAM), else ``disk``.
The splits are computed on the tree's listing, before any decoding, so every mode gives the
same train, validation and test images; unreadable files are dropped from them afterwards.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_app.contract.sidecar import PIXEL_RANGE

from pipeline.data.arrays import FileImages, IndexedImages
from pipeline.data.formats import DATASET_SHAPES, NO_FLIP, RawData, load_raw, nin_cache_dir, resolve_source
from pipeline.errors import DataError

log = logging.getLogger("pipeline")

DATA_CACHES = ("auto", "memory", "disk", "none")
DEFAULT_BUDGET_SHARE = 0.25  # of the machine's RAM, for the decoded images (the memory path holds ~1x of them)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"
    data_dir: str | None = None
    input_size: int | None = None  # resize images to this square size (image trees); None: keep
    val_fraction: float = 0.1
    limit_train: int | None = None
    limit_test: int | None = None
    seed: int = 0
    cache: str = "auto"  # auto | memory | disk | none: where decoded images live (image trees)
    memory_budget_gb: float | None = None  # auto picks memory up to this; None: a quarter of the RAM


@dataclass
class Splits(RawData):
    """The dataset's arrays with the validation split taken out of train (``x_train`` no longer
    holds the ``x_val`` images)."""

    x_val: np.ndarray = field(kw_only=True)
    y_val: np.ndarray = field(kw_only=True)
    hflip: bool = field(default=True, kw_only=True)  # horizontal flips keep the meaning (not for digits)
    cache: str = field(default="memory", kw_only=True)  # where the images are held (see DATA_CACHES)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.labels)


# --------------------------------------------------------------------------- splits


def test_subset(y_test: np.ndarray, n: int) -> np.ndarray:
    """The ``--limit-test N`` subset: the same rule for `build` and `evaluate` (stratified, drawn with a
    fixed seed, independent of --seed and of any other draw), so both score the same images."""
    return stratified_indices(y_test, n, np.random.default_rng(0))


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


@dataclass(frozen=True)
class DataPlan:
    """What the data will be, known before any image is decoded at its final size: what ``make_splits``
    hands its ``fits`` check (e.g. does this machine hold it, and a model trained on it)."""

    hwc: tuple[int, int, int]  # every image's shape as trained on (after --input-size)
    images: int  # train and test, as listed
    classes: int
    mode: str  # memory | disk | none: where the decoded images will live
    source: str
    cache_dir: Path  # where the decoded-image cache goes (mode disk)

    @property
    def decoded_bytes(self) -> int:
        return self.images * int(np.prod(self.hwc))


def memory_budget(cfg: DataConfig) -> float:
    """Bytes of decoded images ``auto`` keeps in memory."""
    if cfg.memory_budget_gb is not None:
        return cfg.memory_budget_gb * 1e9
    return DEFAULT_BUDGET_SHARE * machine_ram()


def machine_ram() -> float:
    """Bytes of RAM this process may use: the machine's, or its container's share."""
    try:
        ram: float = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8e9
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # a container's share
        try:
            ram = min(ram, int(Path(limit).read_text().strip()))
        except (OSError, ValueError):  # absent, or "max"
            pass
    return ram


def check_known_shape(dataset: str, hwc: tuple[int, ...], source: str) -> None:
    """A built-in dataset's name on data of another shape (e.g. --dataset mnist on colour photos) is refused:
    the run would record (and the device be told) a dataset it is not."""
    want = DATASET_SHAPES.get(dataset)
    if want is not None and tuple(hwc) != want:
        kind = "grayscale" if want[2] == 1 else "colour"
        raise DataError(
            f"{source} holds {'x'.join(map(str, hwc))} images, but {dataset} is {'x'.join(map(str, want))} ({kind})",
            "for images of your own, pass --dataset folder (with --input-size N to resize them)",
        )


def make_splits(cfg: DataConfig, progress: bool = True, fits: Callable[[DataPlan], None] | None = None) -> Splits:
    """Load the dataset and carve train / validation (held out of train) / test. ``fits``, given what the data
    will be (a :class:`DataPlan`), raises when it is more than this machine can hold: before anything is decoded at that size."""
    from pipeline.data.tree import is_image_tree_source

    src = resolve_source(cfg.dataset, cfg.data_dir)
    if src is not None and is_image_tree_source(src):
        return _tree_splits(cfg, src, progress, fits)
    raw = load_raw(cfg.dataset, cfg.data_dir, cfg.input_size)
    if raw.x_train.shape[1:] != raw.x_test.shape[1:]:
        raise DataError(f"train images are {raw.x_train.shape[1:]} but test images {raw.x_test.shape[1:]}", "pass --input-size N to resize both")
    check_known_shape(cfg.dataset, raw.x_train.shape[1:], raw.source)
    if cfg.cache in ("disk", "none"):
        log.warning("--data-cache %s applies to image trees; %s from %s is held in memory", cfg.cache, cfg.dataset, raw.source)
    xtr, xte = raw.x_train, raw.x_test
    if fits is not None:
        size = cfg.input_size
        h, w, c = (int(v) for v in xtr.shape[1:])
        fits(DataPlan((size or h, size or w, c), len(xtr) + len(xte), len(raw.labels), "memory", raw.source, nin_cache_dir()))
    if cfg.input_size and xtr.shape[1:3] != (cfg.input_size, cfg.input_size):
        xtr, xte = _resize_all(xtr, cfg.input_size), _resize_all(xte, cfg.input_size)
    train, test = IndexedImages(xtr), IndexedImages(xte)
    return _carve(cfg, train.subset, raw.y_train, test.subset, raw.y_test, (), raw.labels, raw.source, raw.skipped, "memory")


def _tree_splits(cfg: DataConfig, src, progress: bool, fits: Callable[[DataPlan], None] | None = None) -> Splits:
    from functools import partial

    from pipeline.data.store import decode_to_store, find_unreadable, probe
    from pipeline.data.tree import decode, list_tree

    listing = list_tree(src)
    native = probe(listing, None)  # the images' own size: probing at --input-size would decode one image at it
    check_known_shape(cfg.dataset, native, str(src))
    hwc = (cfg.input_size, cfg.input_size, native[2]) if cfg.input_size else native
    decoded = len(listing.names) * int(np.prod(hwc))
    budget = memory_budget(cfg)
    mode = cfg.cache if cfg.cache != "auto" else ("memory" if decoded <= budget else "disk")
    if mode == "none" and listing.archive:
        log.warning(
            "--data-cache none reads image files as it goes, and %s is an archive (read only front to back): "
            "using the decoded-image cache on disk instead",
            src.name,
        )
        mode = "disk"
    log.info(
        "data: %d images of %s decoded are %.2f GB (memory budget %.2f GB): --data-cache %s -> %s",
        len(listing.names),
        "x".join(map(str, hwc)),
        decoded / 1e9,
        budget / 1e9,
        cfg.cache,
        mode,
    )
    if fits is not None:
        fits(DataPlan(hwc, len(listing.names), len(listing.labels), mode, str(src), nin_cache_dir()))
    entries = np.arange(len(listing.names), dtype=np.int64)
    if mode == "none":
        bad = find_unreadable(listing, cfg.input_size, hwc, nin_cache_dir(), progress)
        images: Callable = partial(FileImages, listing.read, partial(decode, size=cfg.input_size, gray=hwc[2] == 1), hwc)
    else:
        store, info = decode_to_store(listing, cfg.input_size, nin_cache_dir(), in_memory=mode == "memory", progress=progress, hwc=hwc)
        bad = info.unreadable
        images = partial(IndexedImages, store)
    if bad:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(bad), ", ".join(listing.names[i] for i in bad[:3]))
    n = listing.n_train
    return _carve(
        cfg,
        lambda idx: images(entries[:n][idx]),
        listing.y[:n],
        lambda idx: images(entries[n:][idx]),
        listing.y[n:],
        bad,
        listing.labels,
        str(src),
        len(bad),
        mode,
        bad_offset=n,
    )


def _carve(
    cfg: DataConfig,
    train: Callable,
    y_train: np.ndarray,
    test: Callable,
    y_test: np.ndarray,
    bad,
    labels: tuple[str, ...],
    source: str,
    skipped: int,
    mode: str,
    bad_offset: int = 0,
) -> Splits:
    """The stratified subsets and the validation hold-out, as positions into train and test, drawn
    over the readable images (``bad``: the unreadable listing entries; test entries start at
    ``bad_offset``) — the same draws in every mode."""
    bad = np.asarray(bad, np.int64)
    unreadable = {"train": bad[bad < bad_offset] if bad_offset else bad[:0], "test": bad[bad >= bad_offset] - bad_offset}
    for split, y in (("train", y_train), ("test", y_test)):
        readable = np.delete(y, unreadable[split])
        empty = [labels[i] for i in np.flatnonzero(np.bincount(readable, minlength=len(labels)) == 0)]
        if empty:
            raise DataError(
                f"{source}: {split}/ has no readable images for class(es) {', '.join(empty)}", "add images or remove the class folder"
            )
    rng = np.random.default_rng(cfg.seed)
    # draws over the readable images only: the unreadable ones are known in every mode before this
    tr = np.setdiff1d(np.arange(len(y_train)), unreadable["train"])
    te = np.setdiff1d(np.arange(len(y_test)), unreadable["test"])
    if cfg.limit_train:
        tr = tr[stratified_indices(y_train[tr], cfg.limit_train, rng)]
    if cfg.limit_test:
        te = te[test_subset(y_test[te], cfg.limit_test)]
    n_val = int(round(len(tr) * cfg.val_fraction))
    va = tr[:0]
    if n_val:
        val_pos = stratified_indices(y_train[tr], n_val, rng)
        mask = np.ones(len(tr), bool)
        mask[val_pos] = False
        va, tr = tr[val_pos], tr[mask]
    return Splits(
        train(tr),
        y_train[tr],
        test(te),
        y_test[te],
        labels,
        source,
        skipped,
        x_val=train(va),
        y_val=y_train[va],
        hflip=cfg.dataset not in NO_FLIP,
        cache=mode,
    )


def _resize_all(x: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    out = []
    for img in x:
        im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        # Pillow sets BILINEAR in a loop its types cannot see (Image.Resampling needs Pillow >= 9.1)
        arr = np.asarray(im.resize((size, size), Image.BILINEAR), np.uint8)  # type: ignore[attr-defined]
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return np.stack(out)


# --------------------------------------------------------------------------- tf.data


def make_dataset(
    x,
    y: np.ndarray,
    batch_size: int,
    *,
    training: bool,
    hflip: bool = True,
    translate: bool = True,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
):
    """uint8 images (an array, :class:`IndexedImages` or :class:`FileImages`) -> a batched, prefetched
    tf.data pipeline of float [0, 1] images.

    The pipeline shuffles positions (not pixels: a permutation of ``len(x)`` integers each epoch),
    batches them, reads each batch's images from ``x`` — rows of the store in memory or on disk, or
    files decoded on the spot — in parallel, and applies the paper's augmentation (random
    horizontal flips and translations of up to 1/8 of the side, by reflect-padding and a random
    crop) to the whole batch at once, in parallel with training. Nothing holds a second copy of the
    dataset. ``shard=(i, n)`` keeps every n-th position from the i-th: worker i of n reads only its
    share of the images (of the array in memory, or of the files of a streamed tree).

    Per batch, not per image: tf.data's per-element map (unbatch, augment each image, batch again)
    took a core's worth of time beside training once oneDNN made the training step twice as fast
    (docs/benchmarks/quick-build.md).
    """
    import tensorflow as tf

    images = x if isinstance(x, (IndexedImages, FileImages)) else IndexedImages(np.asarray(x))
    n = len(images)
    h, w, c = images.shape[1:]
    pad_h, pad_w = max(1, h // 8), max(1, w // 8)
    labels = tf.constant(np.asarray(y, np.int32))

    def read(pos):
        imgs = tf.numpy_function(lambda p: images[p], [pos], tf.uint8, stateful=False)
        imgs.set_shape([None, h, w, c])
        return imgs, tf.gather(labels, pos)

    def to_float(imgs, lab):
        return tf.cast(imgs, tf.float32) / PIXEL_RANGE, lab

    positions = np.arange(n, dtype=np.int64) if shard is None else np.arange(shard[0], n, shard[1], dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices(positions)
    if training:
        ds = ds.shuffle(len(positions), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(read, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        # Stateless random ops, each batch's seeds drawn from a seeded stream that differs every
        # epoch: the same augmentation for the same --seed however the parallel map schedules it
        # (stateful random ops in a parallel map depend on the order the threads reach them).
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

        def augment(pair, s):
            imgs, lab = pair
            b = tf.shape(imgs)[0]
            flip_seed, row_seed, col_seed = tf.unstack(tf.random.experimental.stateless_split(s, 3))
            if hflip:  # each image flipped or not, by its own coin
                coin = tf.random.stateless_uniform([b], flip_seed) < 0.5
                imgs = tf.where(coin[:, None, None, None], tf.reverse(imgs, axis=[2]), imgs)
            if translate:  # each image's own offset into its reflect-padded copy: rows, then columns
                oy = tf.random.stateless_uniform([b], row_seed, minval=0, maxval=2 * pad_h + 1, dtype=tf.int32)
                ox = tf.random.stateless_uniform([b], col_seed, minval=0, maxval=2 * pad_w + 1, dtype=tf.int32)
                padded = tf.pad(imgs, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode="REFLECT")
                rows = oy[:, None] + tf.range(h)[None, :]
                cols = ox[:, None] + tf.range(w)[None, :]
                imgs = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
            return to_float(imgs, lab)

        ds = tf.data.Dataset.zip((ds, seeds)).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def worker_train_dataset(x, y: np.ndarray, global_batch: int, *, hflip: bool, seed: int):
    """The training pipeline one worker of several builds (``fn(input_context)``, for
    :func:`pipeline.stages.cluster.per_worker_dataset`): its own shard of the images, batched per replica
    (``global_batch`` / replicas), repeated."""

    def per_worker(ctx):
        return make_dataset(
            x,
            y,
            ctx.get_per_replica_batch_size(global_batch),
            training=True,
            hflip=hflip,
            seed=seed,
            shard=(ctx.input_pipeline_id, ctx.num_input_pipelines),
        ).repeat()

    return per_worker


def representative_images(x: np.ndarray, y: np.ndarray, n: int = 256, seed: int = 0) -> np.ndarray:
    """A stratified sample of training images (uint8) for calibrating post-training quantisation."""
    idx = stratified_indices(y, min(n, len(y)), np.random.default_rng(seed))
    return x[idx]
