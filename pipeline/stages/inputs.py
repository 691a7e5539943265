"""What the stages train and evaluate on: the data of a run (loaded, logged, fingerprinted), the
tf.data pipelines handed to ``fit`` (one device, several, or one shard per worker), and QAT's
distillation targets. The orchestrator (``pipeline.stages.orchestrator``) joins them to the stages."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from pipeline.data.splits import Splits
from pipeline.runs.config import BuildConfig
from pipeline.runs.folder import RunFolder

log = logging.getLogger("pipeline")


def load_data(cfg: BuildConfig, run: RunFolder) -> Splits:
    from pipeline.data.splits import make_splits
    from pipeline.stages.budget import fits_machine

    t = time.time()
    splits = make_splits(cfg.data, fits=fits_machine(cfg))  # a size this machine cannot hold is refused before it is decoded
    log.info(
        "data: %s from %s: %d train, %d validation, %d test, %d classes, images %s (%.0f s)%s",
        cfg.data.dataset,
        splits.source,
        len(splits.y_train),
        len(splits.y_val),
        len(splits.y_test),
        splits.num_classes,
        "x".join(map(str, splits.input_shape)),
        time.time() - t,
        f"; skipped {splits.skipped} unreadable file(s)" if splits.skipped else "",
    )
    run.check_data(data_fingerprint(splits), str(splits.source))
    run.write_labels(splits.labels)
    return splits


def data_fingerprint(splits: Splits) -> str:
    """What the data is, not where it lives: labels of every split in order, class names, image
    shape, and the first test images' pixels (the same in every --data-cache mode)."""
    import hashlib

    h = hashlib.sha256()
    for y in (splits.y_train, splits.y_val, splits.y_test):
        h.update(np.ascontiguousarray(y, np.int64).tobytes())
    h.update("\n".join(splits.labels).encode())
    h.update(str(splits.input_shape).encode())
    n = min(32, len(splits.y_test))
    h.update(np.ascontiguousarray(splits.x_test[np.arange(n)]).tobytes())
    return h.hexdigest()[:16]


def distillation_targets(teacher, weight: float, num_classes: int) -> Callable:
    """Labels -> ``weight`` * the teacher's probabilities on the same (augmented) batch +
    (1 - ``weight``) * one-hot labels: knowledge distillation from the float model."""
    import tensorflow as tf

    def soft(x, y):
        p = tf.cast(teacher(x, training=False), tf.float32)
        return x, weight * p + (1.0 - weight) * tf.one_hot(tf.cast(tf.reshape(y, [-1]), tf.int32), num_classes)

    return lambda ds: ds.map(soft).prefetch(tf.data.AUTOTUNE)


def fit_datasets(splits: Splits, batch_size: int, seed: int, strategy=None, targets: Callable | None = None):
    """Training (repeated) and validation pipelines and steps per epoch; ``batch_size`` is global.
    Under MultiWorkerMirroredStrategy each worker reads only its shard of the training images.
    ``targets``: a function of a batched dataset that replaces its labels (e.g. :func:`distillation_targets`)."""
    from pipeline.data.splits import make_dataset, worker_train_dataset
    from pipeline.stages.cluster import per_worker_dataset

    targets = targets or (lambda ds: ds)
    if strategy is None:
        train = targets(make_dataset(splits.x_train, splits.y_train, batch_size, training=True, hflip=splits.hflip, seed=seed))
    else:
        per_worker = worker_train_dataset(splits.x_train, splits.y_train, batch_size, hflip=splits.hflip, seed=seed)
        train = per_worker_dataset(strategy, lambda ctx: targets(per_worker(ctx)))
    val = targets(make_dataset(splits.x_val, splits.y_val, 256, training=False)) if len(splits.y_val) else None
    steps = int(np.ceil(len(splits.y_train) / batch_size))
    return (train.repeat() if strategy is None else train), val, steps
