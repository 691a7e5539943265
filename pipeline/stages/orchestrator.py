"""The main job: data -> float training -> QAT -> TFLite conversion -> evaluation, into a run folder.

Each stage records its completion (and seconds) in ``state.json``; re-running a build on the
same run folder skips finished stages and resumes an unfinished training stage from its last
epoch checkpoint. The run folder's files are read and written through ``pipeline.runs.folder``.
The functions at the end are what the ``nin-pipeline`` commands call, one each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.contract.files import (
    CHECKPOINTS,
    CONFIG_JSON,
    EDGETPU_JSON,
    EDGETPU_LOG,
    EDGETPU_TFLITE,
    FLOAT_TFLITE,
    INT8_TFLITE,
    LAYER_ERRORS_JSON,
    PREDICTIONS,
    PTQ_TFLITE,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_MD,
    SIDECAR_NAME,
    TRAIN_LOG,
    history_csv,
)

from pipeline import __version__
from pipeline.data.splits import Splits
from pipeline.errors import RunError
from pipeline.models.nin import ARCHS, ModelConfig
from pipeline.report.records import edgetpu_stage, write_report
from pipeline.runs.config import BuildConfig, BuildRequest, with_target
from pipeline.runs.folder import STAGES, RunFolder, run_lock
from pipeline.stages.cluster import Cluster
from pipeline.stages.inputs import distillation_targets, fit_datasets, load_data
from pipeline.train.fit import TrainConfig

log = logging.getLogger("pipeline")


def setup_logging(run_dir: Path) -> None:
    """Log to the terminal and to ``train.log`` in the run folder (appended across resumes)."""
    root = logging.getLogger("pipeline")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_nin", False):
            root.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    fh = logging.FileHandler(run_dir / TRAIN_LOG)
    fh.setFormatter(fmt)
    sh = logging.StreamHandler()
    sh.setFormatter(fmt)
    for h in (fh, sh):
        h._nin = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.propagate = False


# --------------------------------------------------------------------------- stages


def _model_cfg(cfg: BuildConfig, splits: Splits) -> ModelConfig:
    return dataclasses.replace(cfg.model, input_shape=splits.input_shape, num_classes=splits.num_classes)


def stage_train(cfg: BuildConfig, run: RunFolder, splits: Splits) -> None:
    import tensorflow as tf
    import tf_keras as keras

    from pipeline.models.nin import build_model
    from pipeline.stages import cluster
    from pipeline.train.devices import mixed_precision_wanted
    from pipeline.train.fit import distribution_strategy, seed_everything

    mcfg = _model_cfg(cfg, splits)
    seed_everything(cfg.train.seed, cfg.train.deterministic)  # the initial weights
    mixed = mixed_precision_wanted()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        strategy = cluster.strategy() or distribution_strategy()
        with strategy.scope():
            try:
                model = build_model(mcfg)
            except ValueError as exc:  # e.g. nin-imagenet on 32x32 images
                raise RunError(
                    str(exc), f"pass --input-size {ARCHS[mcfg.arch].min_input_size} (or more) to resize the images, or choose another --arch"
                ) from None
        log.info(
            "model %s: %d parameters; %d replica(s) (%s), policy %s",
            model.name,
            model.count_params(),
            strategy.num_replicas_in_sync,
            type(strategy).__name__,
            keras.mixed_precision.global_policy().name,
        )
        train_ds, val_ds, steps = fit_datasets(splits, cfg.train.batch_size, cfg.train.seed, cluster.strategy())
        if not tf.config.list_physical_devices("GPU") and cfg.profile == "paper" and not cluster.strategy():
            _warn_slow_on_cpu(cfg, model, train_ds, len(splits.y_train))
        _fit(run, model, train_ds, val_ds, cfg.train, steps, "train")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # Save a float32 copy (mixed precision only changes compute dtypes; weights are float32), built
    # outside any strategy. Every worker reads the weights: BatchNorm's statistics are all-reduced.
    final = build_model(mcfg)
    final.set_weights(model.get_weights())
    run.save_float(final)


def _fit(run: RunFolder, model, train_ds, val_ds, tcfg: TrainConfig, steps: int, tag: str, soft_targets: bool = False) -> None:
    """train.fit into the run folder; the backup lives in the chief's folder (``run.shared``) on every worker."""
    from pipeline.stages import cluster
    from pipeline.train.fit import backed_up_epochs, fit

    backup = run.shared / CHECKPOINTS / tag
    cluster.agree([backed_up_epochs(backup)], f"the {tag} epochs already done (the backup in {backup})")
    fit(model, train_ds, val_ds, tcfg, steps_per_epoch=steps, run_dir=run.root, tag=tag, backup_dir=backup, soft_targets=soft_targets)


def _warn_slow_on_cpu(cfg: BuildConfig, model, train_ds, n_train: int) -> None:
    """Measure this machine's speed on the real model and say up front how long the run takes."""
    from pipeline.train.fit import measure_throughput

    ips = measure_throughput(model, train_ds)
    # QAT steps cost about as much as float steps on the CPU (measured: within 5% at width 0.25).
    hours = (cfg.train.epochs + cfg.qat.epochs) * n_train / ips / 3600
    log.warning(
        "profile %s on the CPU: measured %.0f training images/s here, so %d + %d epochs of %d images "
        "take about %.0f hours (%.1f days). It is meant for a GPU; for a CPU run use --profile quick. "
        "Interrupt with Ctrl-C at any time: the run resumes from its last epoch.",
        cfg.profile,
        ips,
        cfg.train.epochs,
        cfg.qat.epochs,
        n_train,
        hours,
        hours / 24,
    )


def stage_qat(cfg: BuildConfig, run: RunFolder, splits: Splits) -> None:
    # QAT runs on one device, in float32 (tfmot's fake-quant ops take no float16). Under
    # MirroredStrategy (two logical CPUs, tf_keras 2.21, tfmot 0.8.1) its first step failed with
    # "Shape mismatch in the collective instance ... expected shape [16728] but another member
    # ... expected shape [17092]": the replicas packed different gradients.
    # Under MultiWorkerMirroredStrategy it does run on every worker (float32): the model made
    # there cannot be converted ('tf.CollectiveReduceV2' is not a TFLite op), so the trained
    # weights go back into ``qat_model``, built outside the strategy, which is what is saved.
    from pipeline.data.splits import representative_images
    from pipeline.export.convert import calibrate_qat_ranges, freeze_batch_norm, quantize
    from pipeline.stages import cluster

    float_model = run.load_float()
    freeze_batch_norm(float_model)
    qat_model = quantize(float_model)
    strategy = cluster.strategy()
    log.info("qat: %s, float32", f"on {strategy.num_replicas_in_sync} replicas (MultiWorkerMirroredStrategy)" if strategy else "on one device")
    calib = representative_images(splits.x_train, splits.y_train, cfg.qat.calibration_samples, cfg.train.seed)
    ranges = calibrate_qat_ranges(qat_model, float_model, calib)
    log.info("qat: BatchNorm frozen; %d activation ranges calibrated on %d training images", len(ranges), len(calib))
    qcfg = TrainConfig(
        epochs=cfg.qat.epochs,
        batch_size=cfg.qat.batch_size,
        lr=cfg.qat.lr,
        momentum=cfg.train.momentum,
        weight_decay=0.0,
        schedule="cosine",
        warmup_epochs=0.0,
        seed=cfg.train.seed + 1,
        deterministic=cfg.train.deterministic,
    )
    if cfg.qat.epochs > 0:
        targets = None
        if cfg.qat.distill > 0:
            teacher = run.load_float()  # the float model as trained (the one above is quantised in place)
            teacher.trainable = False
            targets = distillation_targets(teacher, cfg.qat.distill, splits.num_classes)
            log.info(
                "qat: distilling from the float model (targets %.2g x its probabilities + %.2g x the labels; "
                "'accuracy' is agreement with that target's top class)",
                cfg.qat.distill,
                1 - cfg.qat.distill,
            )
        train_ds, val_ds, steps = fit_datasets(splits, qcfg.batch_size, qcfg.seed, strategy, targets)
        trained = qat_model if strategy is None else cluster.replicate(strategy, float_model, qat_model, quantize)
        _fit(run, trained, train_ds, val_ds, qcfg, steps, "qat", soft_targets=targets is not None)
        if trained is not qat_model:
            qat_model.set_weights(trained.get_weights())  # every worker: the read all-reduces
    else:
        log.info("qat: --qat-epochs 0, converting the QAT-wrapped model without fine-tuning")
    run.save_qat(qat_model)


def stage_convert(cfg: BuildConfig, run: RunFolder, splits: Splits) -> None:
    from pipeline.data.splits import representative_images
    from pipeline.export.convert import describe_tflite, to_tflite_float, to_tflite_int8, training_input_stats
    from pipeline.export.quant_debug import layer_error_tables

    float_model, qat_model = run.load_float(), run.load_qat()
    if cfg.convert.class_maps:
        from pipeline.models.nin import with_class_maps

        float_model, qat_model = with_class_maps(float_model), with_class_maps(qat_model)
    rep = representative_images(splits.x_train, splits.y_train, cfg.convert.representative_samples, cfg.train.seed)
    t = time.time()
    run.write_bytes(FLOAT_TFLITE, to_tflite_float(float_model))
    run.write_bytes(INT8_TFLITE, to_tflite_int8(qat_model, rep, cfg.convert.io_type))
    run.write_bytes(PTQ_TFLITE, to_tflite_int8(float_model, rep, cfg.convert.io_type))
    log.info("convert: float32, QAT int8 and PTQ int8 .tflite written (%.0f s)", time.time() - t)
    sidecar = describe_tflite(
        run.path(INT8_TFLITE),
        splits.labels,
        dataset=cfg.data.dataset,
        arch=cfg.model.arch,
        width=cfg.model.width,
        hashed=[run.path(n) for n in (INT8_TFLITE, FLOAT_TFLITE, PTQ_TFLITE)],
        input_stats=training_input_stats(rep),
    )
    from edge_app.contract.sidecar import write_sidecar

    write_sidecar(run.path(SIDECAR_NAME), sidecar)
    run.write_json(
        LAYER_ERRORS_JSON,
        layer_error_tables({"qat_int8": (run.path(INT8_TFLITE), qat_model), "ptq_int8": (run.path(PTQ_TFLITE), float_model)}, rep),
    )
    from edge_app.contract.files import CLIENTS_JSON, CLIENTS_TFLITE

    for stale in (EDGETPU_TFLITE, EDGETPU_LOG, EDGETPU_JSON, CLIENTS_TFLITE, CLIENTS_JSON):  # they described the old model
        run.path(stale).unlink(missing_ok=True)
    if cfg.convert.target == "edgetpu":
        edgetpu_stage(run)
    from pipeline.report.records import after_convert

    after_convert(run)


def evaluate_and_report(cfg: BuildConfig, run: RunFolder, splits: Splits, *, rerun: bool = True, latency: bool = True) -> dict[str, Any]:
    """Every variant on the test split (the only place the test split is used), then the report files.
    ``rerun=False`` reuses predictions.npz when it holds these test images. Shared by `build` and `report`."""
    from pipeline.report.figures import VARIANTS, build_report, predict_variants
    from pipeline.report.plots import make_plots
    from pipeline.report.render import print_table
    from pipeline.train.fit import read_history

    float_model = run.load_float()  # once: the float predictions and the report's parameter count
    preds = None
    digests = run.model_digests()
    if not rerun and run.path(PREDICTIONS).exists():
        # reused only when made by exactly the models now in the folder (a replaced model, or an
        # evaluation cut off half-way, would give stale or broken figures)
        made_by = run.predictions_made_by()
        if made_by != digests:
            changed = sorted(k for k in digests if made_by.get(k) != digests[k]) or ["no record of them"]
            log.warning("%s was not made by the models now in the folder (%s): evaluating again", PREDICTIONS, ", ".join(changed))
        else:
            preds, y, _ = run.load_predictions(VARIANTS)
            if not np.array_equal(y, splits.y_test):
                raise RunError(f"{run.root}/{PREDICTIONS} is for other test images than the data gives now", "pass --rerun")
    if preds is None:
        log.info("evaluate: %d test images through float Keras, float TFLite, PTQ int8 and QAT int8", len(splits.y_test))
        preds = predict_variants(run, splits.x_test, float_model=float_model)
        run.save_predictions(preds, splits.y_test, splits.labels, digests)
    meta = {"dataset": cfg.data.dataset, "arch": cfg.model.arch, "width": cfg.model.width, "pipeline_version": __version__}
    report = build_report(run, preds, splits.y_test, splits.labels, x=splits.x_test, meta=meta, latency=latency, float_model=float_model)
    history = {tag: read_history(run.path(history_csv(tag))) for tag in ("train", "qat")}
    pngs = make_plots(report, preds, splits.y_test, splits.labels, splits.x_test, history)
    write_report(run, report, pngs)
    log.info("report: %s, %s, %s and %d plots written", REPORT_JSON, REPORT_MD, REPORT_HTML, len(pngs))
    print_table(report)
    return report


# --------------------------------------------------------------------------- orchestration


@contextlib.contextmanager
def stage_errors():
    """TensorFlow's runtime errors inside a stage, raised as the one error hierarchy's (cluster.failure)."""
    import tensorflow as tf

    from pipeline.stages import cluster

    try:
        yield
    except tf.errors.OpError as exc:
        raise cluster.failure(exc) from None


STAGE_FUNCTIONS = {"train": stage_train, "qat": stage_qat, "convert": stage_convert, "evaluate": evaluate_and_report}


def run_stages(
    run: RunFolder,
    stages: tuple[str, ...] = STAGES,
    force: tuple[str, ...] = (),
    *,
    workers: Cluster | None = None,
    worker_timeout: float = 600.0,
    collective_timeout: float = 0.0,
) -> dict[str, Any]:
    """Run ``stages`` in order, skipping those already done unless forced; each is marked done with its seconds.
    With ``workers`` (several machines) training and QAT run under MultiWorkerMirroredStrategy; only
    the chief goes on to conversion and evaluation."""
    from pipeline.stages import cluster
    from pipeline.train.devices import configure_devices

    cfg = run.load_config()
    if workers is not None:
        strategy = cluster.start(workers, collective_s=collective_timeout, startup_s=worker_timeout)  # TF's first call
        cluster.check_batch_sizes(strategy, {"--batch-size": cfg.train.batch_size, "the QAT batch size": cfg.qat.batch_size})
        if not workers.is_chief:
            stages = tuple(s for s in stages if s in ("train", "qat"))
    info = configure_devices()
    log.info("run folder %s (nin-pipeline %s, TensorFlow %s)", run.root, __version__, info["tensorflow"])
    for stage in STAGES:  # a done stage whose outputs are gone or changed (a truncated copy, an edit) is redone
        bad = run.damaged_outputs(stage) if run.done(stage) else []
        if bad:
            log.warning("stage %s was done, but %s: doing it again, and the stages after it", stage, "; ".join(bad))
            run.forget(stage)
            break
    todo = [s for s in stages if s in force or not run.done(s)]
    cluster.agree([int(s in todo) for s in ("train", "qat")], "the training stages still to run")
    ok, t0 = False, time.time()
    try:
        splits = load_data(cfg, run) if todo else None
        if not todo:
            log.info("every stage is already done; nothing to do")
        for stage in STAGES if todo else ():
            # re-checked each time: redoing a stage makes every later stage stale (RunFolder.mark)
            if stage not in stages or not (stage in force or not run.done(stage)):
                continue
            t = time.time()
            log.info("stage %s ...", stage)
            with stage_errors():
                STAGE_FUNCTIONS[stage](cfg, run, splits)
            log.info("stage %s done in %.0f s", stage, time.time() - t)
            run.mark(stage, seconds=time.time() - t)
        ok = True
    finally:
        cluster.chief_finished(ok)
    cluster.wait_for_chief()
    log.info("finished in %.0f s; run folder: %s", time.time() - t0, run.root)
    return run.read_report_if_any()


def resolve_build(request: BuildRequest, out: Path | None, *, resume: bool = False, workers: Cluster | None = None) -> tuple[BuildConfig, Path]:
    """Where the run goes and with which settings: the one place `build`'s flags become a BuildConfig.
    ``resume`` alone (no setting given): the run folder's own settings (the newest matching run in
    artifacts/ without ``out``); else the request's, which an existing folder must match. ``workers``: one
    of several machines, all given the same ``out`` (see ``pipeline.stages.cluster``)."""
    from pipeline.data.formats import resolve_source

    if workers is not None and out is None:
        from pipeline.stages.cluster import ClusterError

        raise ClusterError("a multi-worker build needs --out", "give every worker the same --out, on storage they all see")
    if resume and out is None:
        runs = sorted(p for p in Path("artifacts").glob(f"{request.dataset}-{request.arch}-*") if (p / CONFIG_JSON).exists())
        if not runs:
            raise RunError(f"--resume: no run folder artifacts/{request.dataset}-{request.arch}-* to resume", "pass --out RUN")
        out = runs[-1]
    if resume and not (Path(out) / CONFIG_JSON).is_file():
        if workers is not None and not workers.is_chief:
            from pipeline.stages.cluster import ClusterError

            raise ClusterError(
                f"{workers.describe()}: --resume, but the chief's run folder {out} is not visible here (no {CONFIG_JSON})",
                "every worker needs the chief's --out on storage they all see (NFS, a ReadWriteMany "
                "volume); if the chief never started it, leave out --resume on every worker",
            )
        raise RunError(f"--resume: {out} is not a run folder (no {CONFIG_JSON})", "leave out --resume to start it")
    if resume and not request.overrides:
        return request.with_data_place(RunFolder.open(out).load_config()), Path(out)
    resolve_source(request.dataset, request.data_dir)  # a wrong --data-dir fails before any folder is made
    out = out or Path("artifacts") / f"{request.dataset}-{request.arch}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return request.config(), Path(out)


def build(
    cfg: BuildConfig, out: Path, *, workers: Cluster | None = None, worker_timeout: float = 600.0, collective_timeout: float = 0.0
) -> RunFolder:
    """`nin-pipeline build`: the run folder at ``out`` with ``cfg`` (made, or reopened when it was started
    with the same settings), every stage to the end. A worker of several (``workers``, not the chief)
    trains in its own folder beside the chief's, which only the chief writes."""
    if workers is not None and not workers.is_chief:
        from pipeline.stages.cluster import worker_folder

        with worker_folder(out, cfg, workers) as run:
            setup_logging(run.root)
            run_stages(run, workers=workers, worker_timeout=worker_timeout, collective_timeout=collective_timeout)
            log.info("%s: training and QAT done; the chief converts and reports into %s", workers.describe(), out)
        return RunFolder(out)
    folder_was_there = Path(out).exists()  # (the lock makes it)
    with run_lock(out, "nin-pipeline build"):
        config_was_there = (Path(out) / CONFIG_JSON).exists()
        run = RunFolder.create(out, cfg)
        setup_logging(run.root)
        try:
            run_stages(run, workers=workers, worker_timeout=worker_timeout, collective_timeout=collective_timeout)
        except BaseException:
            if not config_was_there:
                run.discard_unstarted(folder_was_there)
            raise
    return run


def redo_stage(run_dir: Path, stage: str, target: str | None = None) -> RunFolder:
    """`nin-pipeline train|qat|convert RUN`: redo one stage (from scratch), then every later one.
    ``target`` (convert only) converts for another target from now on."""
    import shutil

    run = RunFolder.open(run_dir)
    with run_lock(run.root, f"nin-pipeline {stage}"):
        setup_logging(run.root)
        if target is not None:
            run.save_config(with_target(run.load_config(), target))
        if run.done(stage) and stage in ("train", "qat"):
            shutil.rmtree(run.path(CHECKPOINTS) / stage, ignore_errors=True)  # redo from scratch
        # the stage itself is forced; the later ones run because redoing it made them stale
        run_stages(run, STAGES[STAGES.index(stage) :], force=(stage,))
    return run


def rewrite_report(run_dir: Path, *, rerun: bool = False, latency: bool = True) -> Path:
    """`nin-pipeline report RUN`: the report files again, from saved predictions unless ``rerun``."""
    run = RunFolder.open(run_dir)
    cfg = run.load_config()
    if not run.path(INT8_TFLITE).exists():
        raise RunError(f"{run_dir} has no models yet", f"finish it with `nin-pipeline build --resume --out {run_dir}`")
    with run_lock(run.root, "nin-pipeline report"):
        setup_logging(run.root)
        t = time.time()
        with stage_errors():
            evaluate_and_report(cfg, run, load_data(cfg, run), rerun=rerun, latency=latency)
        if run.done("convert"):
            run.mark("evaluate", seconds=time.time() - t)  # its new outputs are the recorded ones
    return run.path(REPORT_HTML)
