"""`build --time-budget MINUTES`: the number of float epochs planned from this machine's measured speed,
so that the whole build (data, training, QAT, conversion, report) ends within the budget.

The plan is made once, before training starts, and recorded in config.json (``BuildConfig.plan``):
a resume takes it from there, and a new build with the recorded ``--epochs`` trains the same model.
The probe trains throwaway copies, before the build seeds its own weights, so it changes nothing.

A plan is a forecast, and a shared machine can slow down after the probe (other jobs, a noisy VM
neighbour). While training, the build holds to the budget (:class:`Deadline`): after each epoch it
projects the end from the epochs just measured, and where that is late it shortens the schedule
(fewer epochs, the rate annealed over the ones left), and records the cut in config.json.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from pipeline.errors import RunError

log = logging.getLogger("pipeline")

# of the time left, what the plan fills: the probe times a few dozen steps, and on a shared 2-core VM one
# build's epochs spread by +-12% around a rate that the probe put 12% high (docs/benchmarks/recipe.md)
MARGIN = 0.85
AFTER_FIXED_S = 20.0  # conversion (float, PTQ and QAT int8) and the report's files, besides evaluating
QAT_FIXED_S = 20.0  # QAT's setup: wrapping the model, calibrating its ranges on 1,024 images, saving it
# of the time left at a cut, what the shortened schedule fills (the epochs it measured are the forecast now)
CUT_MARGIN = 0.95


@dataclass(frozen=True)
class Deadline:
    """The budget, held to while training: ``end`` (time.time()) by which the build should have ended, and
    the plan's figures for one float epoch and for everything after training."""

    end: float
    float_epoch_s: float
    after_training_s: float  # QAT, conversion and the report, as planned

    def epochs(self, done: int, seconds: list[float], planned: int, now: float) -> int | None:
        """Fewer epochs than ``planned`` where the build would end late at the pace of the last epochs
        (``seconds``: each epoch run so far in this process), else None. The first epoch carries the
        graph's tracing and a cut cannot be undone, so nothing is judged before three epochs after it
        (the median of three: one slow epoch is outvoted). What follows training is assumed slowed down
        as much as the epochs were. Where no further epoch fits, one more still runs: the rate annealed
        to its floor in it, rather than a model left at a high rate mid-schedule."""
        if done + 1 >= planned or len(seconds) < 4:
            return None
        pace = self.pace(seconds)
        if now + (planned - done) * pace + self.after(pace) <= self.end:
            return None
        more = math.floor((self.end - now - self.after(pace)) * CUT_MARGIN / pace)
        return min(planned - 1, done + max(1, more))

    @staticmethod
    def pace(seconds: list[float]) -> float:
        """Seconds an epoch takes now: the median of the last three, the first (tracing) left out while there are others."""
        return statistics.median(seconds[1:][-3:] or seconds)

    def after(self, pace: float) -> float:
        """What follows training, at the float epochs' ``pace`` (s): as planned, or slower as they are."""
        return self.after_training_s * max(1.0, pace / self.float_epoch_s if self.float_epoch_s > 0 else 1.0)

    def late_by(self, done: int, seconds: list[float], epochs: int, now: float) -> float:
        """Seconds past the end that ``epochs`` epochs in all, at the last epochs' pace, would take (<= 0: in time)."""
        pace = self.pace(seconds)
        return now + (epochs - done) * pace + self.after(pace) - self.end


@dataclass(frozen=True)
class Speeds:
    """Measured on this machine with the real model and batch: images per second."""

    train_ips: float  # float training steps
    qat_ips: float  # QAT steps (with the distillation teacher's forward pass where the build distils)
    eval_ips: float  # inference (validation each epoch, the report's evaluations)
    trace_s: float = 0.0  # once per build: tracing the float and the QAT train functions


def plan_epochs(budget_s: float, spent_s: float, speeds: Speeds, n_train: int, n_val: int, n_test: int, qat_epochs: int) -> dict[str, Any]:
    """The float epochs that fit, and the sums that say why. Raises RunError when not even one fits."""
    float_epoch_s = n_train / speeds.train_ips + n_val / speeds.eval_ips
    qat_s = QAT_FIXED_S + qat_epochs * (n_train / speeds.qat_ips + n_val / speeds.eval_ips)
    after_s = AFTER_FIXED_S + 4 * n_test / speeds.eval_ips  # float Keras, float TFLite, PTQ and QAT int8 on the test split
    after_s += speeds.trace_s
    left = (budget_s - spent_s - qat_s - after_s) * MARGIN
    epochs = math.floor(left / float_epoch_s) if left > 0 else 0
    need = (spent_s + float_epoch_s / MARGIN + qat_s + after_s) / 60
    if epochs < 1:
        raise RunError(
            f"--time-budget {budget_s / 60:g} min: not even one epoch fits here "
            f"(one epoch, QAT and the report need about {need:.0f} min on this machine)",
            f"give --time-budget {math.ceil(need) + 1} or more, or --epochs N, or fewer images (--limit-train)",
        )
    return {
        "budget_min": budget_s / 60,
        "epochs": epochs,
        "spent_before_training_s": round(spent_s, 1),
        "float_epoch_s": round(float_epoch_s, 1),
        "qat_s": round(qat_s, 1),
        "after_training_s": round(after_s, 1),
        "planned_total_min": round((spent_s + epochs * float_epoch_s + qat_s + after_s) / 60, 2),
        "train_images_per_s": round(speeds.train_ips, 1),
        "qat_images_per_s": round(speeds.qat_ips, 1),
        "eval_images_per_s": round(speeds.eval_ips, 1),
        "tracing_s": round(speeds.trace_s, 1),
    }


def _timed_fit(model, loss, ds, batch: int, executions: int) -> tuple[float, float]:
    """Images per second of ``model.fit`` on ``ds`` as the build runs it (the same steps per execution),
    and the seconds that tracing the graph adds once: one ``fit`` call, each call into the graph timed
    from the callbacks, the median of those after the first two. Measured otherwise, the probe missed:
    single ``train_on_batch`` calls gave 446 images/s where the build trained at ~690 (each call's round
    trip through Python), and separate short ``fit`` calls under op determinism 399 (a new iterator each)."""
    import statistics

    import tf_keras as keras

    from pipeline.train.fit import STEPS_PER_EXECUTION

    ends: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):  # once per execution (STEPS_PER_EXECUTION steps)
            ends.append(time.perf_counter())

    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss, steps_per_execution=STEPS_PER_EXECUTION)
    t = time.perf_counter()
    model.fit(ds, steps_per_epoch=(2 + executions) * STEPS_PER_EXECUTION, epochs=1, verbose=0, callbacks=[Clock()])
    per_execution_s = statistics.median(b - a for a, b in zip(ends[1:], ends[2:]))
    return STEPS_PER_EXECUTION * batch / per_execution_s, max(0.0, ends[0] - t - per_execution_s)


def measure_speeds(cfg, splits, executions: int = 8) -> Speeds:
    """Train, QAT and inference rates of this build's own model, batch and input pipeline, on copies."""
    import numpy as np
    import tf_keras as keras

    from pipeline.export.convert import quantize
    from pipeline.models.nin import build_model
    from pipeline.stages.inputs import distillation_targets, fit_datasets

    mcfg = dataclasses.replace(cfg.model, input_shape=splits.input_shape, num_classes=splits.num_classes)
    model = build_model(mcfg)
    train_ds, _, _ = fit_datasets(splits, cfg.train.batch_size, cfg.train.seed)
    train_ips, train_trace_s = _timed_fit(model, keras.losses.SparseCategoricalCrossentropy(), train_ds, cfg.train.batch_size, executions)
    qat = quantize(build_model(mcfg))
    targets = distillation_targets(model, cfg.qat.distill, splits.num_classes) if cfg.qat.distill else None
    ds = fit_datasets(splits, cfg.qat.batch_size, cfg.train.seed, targets=targets)[0]
    loss = "categorical_crossentropy" if targets else keras.losses.SparseCategoricalCrossentropy()
    qat_ips, qat_trace_s = _timed_fit(qat, loss, ds, cfg.qat.batch_size, max(2, executions // 2))
    x = np.asarray(splits.x_train[: min(len(splits.y_train), 4096)], dtype=np.float32) / 255.0
    model.predict(x[:256], batch_size=256, verbose=0)
    t = time.perf_counter()
    model.predict(x, batch_size=256, verbose=0)
    eval_ips = len(x) / (time.perf_counter() - t)
    return Speeds(train_ips, qat_ips, eval_ips, train_trace_s + qat_trace_s)


def plan_build(cfg, run, splits, started: float) -> tuple[Any, Deadline]:
    """``cfg`` with the planned epochs and the plan, recorded in the run folder's config.json, and the
    deadline that training holds to."""
    speeds = measure_speeds(cfg, splits)
    n_test = len(splits.y_test)
    plan = plan_epochs(cfg.time_budget_min * 60, time.time() - started, speeds, len(splits.y_train), len(splits.y_val), n_test, cfg.qat.epochs)
    planned = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=plan["epochs"]), plan=plan)
    run.save_config(planned)
    log.info(
        "time budget %g min: measured %.0f training images/s, %.0f in QAT, %.0f inferences/s here; planned %d float epochs "
        "(%.0f s each) + %d QAT epoch(s) (%.0f s) + conversion and report (~%.0f s), about %.1f min in all "
        "(recorded in config.json: `--epochs %d` repeats it)",
        plan["budget_min"],
        speeds.train_ips,
        speeds.qat_ips,
        speeds.eval_ips,
        plan["epochs"],
        plan["float_epoch_s"],
        cfg.qat.epochs,
        plan["qat_s"],
        plan["after_training_s"],
        plan["planned_total_min"],
        plan["epochs"],
    )
    deadline = Deadline(started + plan["budget_min"] * 60, plan["float_epoch_s"], plan["qat_s"] + plan["after_training_s"])
    return planned, deadline


def holding_to(deadline: Deadline, cfg, run):
    """The ``replan`` that training (pipeline.train.fit) calls after each epoch: where the deadline asks for
    fewer epochs, it records the cut in config.json before the next epoch starts, and says so."""
    current = [cfg]

    def replan(done: int, seconds: list[float], planned: int) -> int | None:
        new = deadline.epochs(done, seconds, planned, time.time())
        if new is None:
            return None
        c = current[0]
        train = dataclasses.replace(c.train, epochs=new, cuts=(*c.train.cuts, (done, planned, new)))
        current[0] = dataclasses.replace(c, train=train)
        run.save_config(current[0])
        pace = deadline.pace(seconds)
        late = deadline.late_by(done, seconds, new, time.time())
        goal = (
            f"to end within the {c.time_budget_min:g} min"
            if late <= 0
            else f"the fewest that still anneal it; even so the build will end about {late / 60:.1f} min after the {c.time_budget_min:g} min"
        )
        log.warning(
            "time budget: epochs take %.0f s here, not the %.0f s planned (the machine is slower than when it was probed); "
            "shortened to %d epochs, the rate annealed over the %d left, %s (recorded in config.json: a resume, or a build "
            "on a copy of it, replays the cut)",
            pace,
            deadline.float_epoch_s,
            new,
            new - done,
            goal,
        )
        return new

    return replan
