"""A small, generic Keras training loop driver: SGD with momentum and weight decay, an LR
schedule, TensorBoard and CSV logs, a backup every epoch (Keras BackupAndRestore) and resume.

It knows nothing of NiN: it takes any compiled-able tf_keras model and tf.data pipelines.
Resuming restores the model, the optimizer (momentum slots and step counter, so the LR
schedule carries on where it stopped) and the epoch from the last backup — on one device,
several GPUs, or several machines (MultiWorkerMirroredStrategy) alike.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4  # decoupled, not applied to BatchNorm or biases
    schedule: str = "cosine"  # cosine: linear warm-up then cosine decay; step: 10x drops at 50% and 75%
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    ema: float = 0.0  # > 0: the model ends with the moving average of its weights (this momentum per step)
    seed: int = 0
    deterministic: bool = True  # op determinism: the same seed gives the same model, bit for bit
    # where a deadline shortened the schedule, in order: (epochs done, epochs before, epochs after); from
    # each, the rate goes from its value there down to the schedule's floor over the epochs left (cosine)
    cuts: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "cuts", tuple(tuple(int(v) for v in c) for c in self.cuts))  # JSON gives lists
        except ValueError as exc:
            raise TypeError(f"train.cuts: {exc}") from None
        before = None
        for c in self.cuts:  # TypeError: a config.json edited by hand is refused as one that describes no build
            if len(c) != 3 or not (0 < c[0] < c[2] < c[1]) or (before is not None and c[1] != before):
                raise TypeError(f"train.cuts: {list(c)} is no (epochs done, epochs before, epochs after) that follows the cut before it")
            before = c[2]


# of the peak rate, where the cosine schedules end (CosineDecay's alpha) and a shortened one ends too
LR_FLOOR = 0.01


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and TensorFlow (weight initialisation, dropout); with ``deterministic``,
    also make TensorFlow pick deterministic kernels and tf.data keep its order
    (``tf.config.experimental.enable_op_determinism``, which cannot be undone in the process)."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def make_schedule(cfg: TrainConfig, steps_per_epoch: int, cuttable: bool = False):
    """The learning rate as a function of the optimizer's step counter (so it survives resume).
    ``cuttable`` (or recorded ``cfg.cuts``): a :func:`shortenable` schedule, which a deadline can shorten."""
    base = _base_schedule(cfg, cfg.cuts[0][1] if cfg.cuts else cfg.epochs, steps_per_epoch)
    if not (cuttable or cfg.cuts):
        return base
    schedule = shortenable(base, cfg.lr * LR_FLOOR)
    for done, _, total in cfg.cuts:  # the recorded cuts again, in order: each starts from the rate the one before gave
        schedule.cut(done * steps_per_epoch, total * steps_per_epoch)
    return schedule


def shortenable(base, floor: float):
    """``base`` (a Keras schedule) until ``cut(at_step, end_step)``: from then a cosine from the rate at
    ``at_step`` down to ``floor`` at ``end_step``. The cut lives in variables that the traced train step
    reads, so it takes effect mid-``fit`` without retracing; they are not checkpointed (config.json
    records the cuts, and :func:`make_schedule` replays them)."""
    import tensorflow as tf
    import tf_keras as keras

    class Shortenable(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self) -> None:
            self.base, self.floor = base, floor
            self.start = tf.Variable(-1, dtype=tf.int64, trainable=False, name="lr_cut_step")
            self.end = tf.Variable(0, dtype=tf.int64, trainable=False, name="lr_cut_end")
            self.start_lr = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="lr_cut_rate")

        def __call__(self, step):
            step = tf.cast(step, tf.int64)
            before = tf.cast(self.base(step), tf.float32)
            span = tf.maximum(self.end - self.start, 1)
            t = tf.cast(tf.clip_by_value(step - self.start, 0, span), tf.float32) / tf.cast(span, tf.float32)
            after = self.floor + (self.start_lr - self.floor) * 0.5 * (1.0 + tf.cos(math.pi * t))
            return tf.where(tf.logical_and(self.start >= 0, step >= self.start), after, before)

        def cut(self, at_step: int, end_step: int) -> None:
            rate = self(at_step)  # eagerly, the rate the schedule so far gives there
            self.start_lr.assign(rate)
            self.start.assign(at_step)
            self.end.assign(end_step)

        def get_config(self):
            return {
                "base": keras.optimizers.schedules.serialize(self.base),
                "floor": self.floor,
                "start": int(self.start.numpy()),
                "end": int(self.end.numpy()),
                "start_lr": float(self.start_lr.numpy()),
            }

    return Shortenable()


def _base_schedule(cfg: TrainConfig, epochs: int, steps_per_epoch: int):
    import tf_keras as keras

    total = max(1, epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        warm = min(int(cfg.warmup_epochs * steps_per_epoch), total // 2)
        if warm == 0:
            return keras.optimizers.schedules.CosineDecay(cfg.lr, total, alpha=LR_FLOOR)
        return keras.optimizers.schedules.CosineDecay(cfg.lr * 0.1, total - warm, alpha=LR_FLOOR, warmup_target=cfg.lr, warmup_steps=warm)
    if cfg.schedule == "step":
        # The paper lowers the rate 10x when validation accuracy plateaus; fixed drops at
        # half and three quarters of training are that recipe made deterministic and resumable.
        bounds = [int(total * 0.5), int(total * 0.75)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [cfg.lr, cfg.lr * 0.1, cfg.lr * 0.01])
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int, cuttable: bool = False):
    import tf_keras as keras

    # EMA: Keras keeps the average in the optimizer (checkpointed with it, so a resume keeps it) and
    # writes it into the model when fit ends; validation during training sees the raw weights
    opt = keras.optimizers.SGD(
        learning_rate=make_schedule(cfg, steps_per_epoch, cuttable),
        momentum=cfg.momentum,
        nesterov=True,
        weight_decay=cfg.weight_decay or None,
        use_ema=cfg.ema > 0,
        ema_momentum=cfg.ema or 0.99,
    )
    if cfg.weight_decay:
        # Decay only convolution / dense kernels: decaying BatchNorm scales and biases
        # (or QAT's learned ranges) hurts and buys nothing.
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias", "_min", "_max", "moving_"])
    return opt


def distribution_strategy():
    """MirroredStrategy over several GPUs (or several logical CPU devices, which is how the GPU path
    is exercised without a GPU); the default strategy on one device."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    cpus = tf.config.list_logical_devices("CPU")
    if not gpus and len(cpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    return tf.distribute.get_strategy()


# Training steps per call into TensorFlow's graph: fewer round trips through Python, the executor and
# the per-batch callbacks (progress bar, TerminateOnNaN) between steps (a small gain, within noise on a
# 2-core CPU: docs/benchmarks/training-speed.md). The same steps in the same order, so the same bits.
# Callbacks that act per batch see every 8th step.
STEPS_PER_EXECUTION = 8


def backed_up_epochs(backup_dir: Path) -> int:
    """Epochs finished according to the BackupAndRestore backup in ``backup_dir`` (0 without one).

    Read from the checkpoint file, without restoring anything, so the caller knows before
    training starts (to trim the CSV log, to say so, and for workers to agree on it)."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(Path(backup_dir) / "chief"))
    if not latest:
        return 0
    try:
        saved = int(tf.train.load_checkpoint(latest).get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.OpError, ValueError):
        return 0  # unreadable: BackupAndRestore fails on it too, with TensorFlow's message
    return max(0, saved + 1)  # BackupAndRestore stores the 0-based epoch it finished


def fit(
    model,
    train_ds,
    val_ds,
    cfg: TrainConfig,
    *,
    steps_per_epoch: int,
    run_dir: Path,
    tag: str,
    verbose: int | None = None,
    extra_callbacks: list | None = None,
    backup_dir: Path | None = None,
    soft_targets: bool = False,
    replan: Callable[[int, list[float], int], int | None] | None = None,
) -> dict[str, list[float]]:
    """Compile and train ``model``; an interrupted run resumes from its last finished epoch.

    Fault tolerance is Keras's ``BackupAndRestore`` (model, optimizer — momentum and step
    counter, so the LR schedule carries on — and epoch, after every epoch) in ``backup_dir``
    (default ``run_dir/checkpoints/<tag>``). Under MultiWorkerMirroredStrategy every worker
    passes the same ``backup_dir``: all restore from the chief's backup, the others' writes go
    to temporary folders. The per-epoch CSV log is trimmed to the restored epoch, so a resumed
    run has no duplicated rows. Returns the full history read back from that log. ``soft_targets``:
    the datasets give class-probability vectors (e.g. a teacher's), not class indices; "accuracy" is
    then agreement with their top class. ``replan(epochs done, seconds of each epoch run here, epochs
    planned)``, called after each epoch, may return fewer epochs (a deadline): the schedule is shortened
    from there (:func:`shortenable`) and training ends at that many; recording it is the caller's.
    """
    import tensorflow as tf
    import tf_keras as keras

    backup_dir = Path(backup_dir or run_dir / "checkpoints" / tag)
    seed_everything(cfg.seed, cfg.deterministic)
    # the optimizer, metrics and checkpoint variables belong to the strategy the model was built
    # under (MirroredStrategy on several GPUs): made outside its scope, compile refuses them
    with model.distribute_strategy.scope():
        optimizer = make_optimizer(cfg, steps_per_epoch, cuttable=replan is not None)
        if soft_targets:
            loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
            accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
        else:
            loss = _smoothed_sparse_ce(cfg.label_smoothing) if cfg.label_smoothing else keras.losses.SparseCategoricalCrossentropy()
            accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy], steps_per_execution=STEPS_PER_EXECUTION)
    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # the per-step figures of the progress bar: this worker's own (Keras's "auto" sums them over the
        # workers, an all-reduce per step that showed 2x the loss with 2 workers); epoch-end figures are global
        model.distribute_reduction_method = "first"
    initial_epoch = backed_up_epochs(backup_dir)
    csv_path = run_dir / f"history_{tag}.csv"
    if initial_epoch == 0 and csv_path.exists():
        csv_path.unlink()  # a stale log from a run that never finished an epoch
    if initial_epoch >= cfg.epochs:
        log.info("%s: all %d epochs already done (backup), restoring the weights", tag, cfg.epochs)
    elif initial_epoch:
        log.info("%s: resuming from the checkpoint after epoch %d of %d", tag, initial_epoch, cfg.epochs)
    _truncate_history(csv_path, initial_epoch)

    planned = [cfg.epochs]  # the epochs to train, as a deadline may shorten them

    class EpochLog(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []  # of each epoch run in this process

        def on_epoch_begin(self, epoch, logs=None):
            self.t, self.val = time.perf_counter(), 0.0

        def on_test_begin(self, logs=None):
            self.val_t = time.perf_counter()

        def on_test_end(self, logs=None):
            self.val += time.perf_counter() - self.val_t

        def on_epoch_end(self, epoch, logs=None):
            msg = " ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())
            log.info(
                "%s epoch %d/%d: %s (lr=%.5f, %.1f s, validation %.1f s)",
                tag,
                epoch + 1,
                planned[0],
                msg,
                _current_lr(optimizer),
                time.perf_counter() - self.t,
                self.val,
            )
            self.seconds.append(time.perf_counter() - self.t)
            done = epoch + 1
            new = replan(done, list(self.seconds), planned[0]) if replan is not None and done < planned[0] else None
            if new is not None and new < planned[0]:
                optimizer._learning_rate.cut(done * steps_per_epoch, new * steps_per_epoch)  # the schedule (.learning_rate is its current value)
                planned[0] = new
            if done >= planned[0]:
                self.model.stop_training = True

    bar = _progress_bar(verbose) if initial_epoch < cfg.epochs else 0
    callbacks = [
        # first: it restores before the others start and backs up after every epoch
        keras.callbacks.BackupAndRestore(str(backup_dir), save_freq="epoch", delete_checkpoint=False),
        # given here, before EpochLog, so that the bar ends its epoch line before the epoch's log line
        # (Keras's own bar would come last and the log line would be glued onto the unfinished bar)
        *([keras.callbacks.ProgbarLogger(count_mode="steps")] if bar else []),
        keras.callbacks.CSVLogger(str(csv_path), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard" / tag), update_freq="epoch", profile_batch=0),
        EpochLog(),
        keras.callbacks.TerminateOnNaN(),
        *(extra_callbacks or []),
    ]
    t0 = time.time()
    # with every epoch backed up, fit restores the weights and trains no further epoch
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=bar)
    if initial_epoch < cfg.epochs:
        log.info("%s: %d epoch(s) in %.0f s", tag, planned[0] - initial_epoch, time.time() - t0)
    if any(math.isnan(v) for v in read_history(csv_path).get("loss", [])):
        from pipeline.errors import TrainingError

        raise TrainingError(f"{tag}: the loss became NaN", "lower --lr or check the data")
    return read_history(csv_path)


def measure_throughput(model, train_ds, steps: int = 5) -> float:
    """Training images per second of ``model``'s architecture on this machine.

    Trains a fresh clone (the real model's weights are untouched) for one warm-up step and
    then ``steps`` timed steps.
    """
    import tf_keras as keras

    probe = keras.models.clone_model(model)
    probe.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.SparseCategoricalCrossentropy())
    it = iter(train_ds)
    x, y = next(it)
    probe.train_on_batch(x, y)
    t = time.perf_counter()
    n = 0
    for _ in range(steps):
        x, y = next(it)
        probe.train_on_batch(x, y)
        n += int(x.shape[0])
    return n / (time.perf_counter() - t)


def _progress_bar(verbose: int | None) -> int:
    """Keras's bar on a terminal; in a log file or a pipe nothing from Keras (its bar would be written
    there as thousands of carriage-return updates): the one line per epoch comes from the epoch log."""
    import sys

    if verbose is not None:
        return verbose
    return 1 if sys.stdout.isatty() else 0


def _smoothed_sparse_ce(eps: float):
    import tensorflow as tf
    import tf_keras as keras

    def loss(y_true, y_pred):
        onehot = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), tf.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(onehot, y_pred, label_smoothing=eps)

    return loss


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    try:
        # a schedule of the step; under a distribution strategy a mirrored variable holding the current rate
        value = lr(int(optimizer.iterations.numpy())) if callable(lr) else lr
        return float(value.numpy() if hasattr(value, "numpy") else value)
    except Exception:
        return float("nan")


def _truncate_history(csv_path: Path, epochs: int) -> None:
    """Drop CSV rows past the restored epoch (they were logged after the last checkpoint)."""
    if not csv_path.exists():
        return
    lines = csv_path.read_text().splitlines()
    if len(lines) > epochs + 1:
        csv_path.write_text("\n".join(lines[: epochs + 1]) + "\n")


def read_history(csv_path: Path) -> dict[str, list[float]]:
    import csv

    if not csv_path.exists():
        return {}
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            try:
                out.setdefault(k, []).append(float(v))
            except (TypeError, ValueError):  # CSVLogger writes "NA" for a metric it lacked
                out.setdefault(k, []).append(float("nan"))
    return out


def tf_error_line(exc: BaseException) -> str:
    """The line of a TensorFlow runtime error that says what went wrong (its graph and node context dropped)."""
    import re

    lines = [ln.strip() for ln in (getattr(exc, "message", None) or str(exc)).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith(("Graph execution error", "Detected at node", "File ", "[[", "The error could be"))]
    return re.sub(r"\{\{function_node [^}]*\}\}\s*", "", (said or lines or [""])[0])  # TF's op-name prefix
