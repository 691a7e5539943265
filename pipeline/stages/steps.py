"""The build's stages, one function each: float training, QAT, conversion, and the evaluation that
writes the report. Each takes the resolved ``BuildConfig``, the run folder and the data splits, and
writes its files through ``pipeline.runs.folder``; ``pipeline.stages.orchestrator`` runs them in order,
records them and resumes them."""

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.contract.files import (
    CHECKPOINTS,
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
from pipeline.runs.config import BuildConfig
from pipeline.runs.folder import RunFolder, writing
from pipeline.stages.inputs import distillation_targets, fit_datasets
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
        h._nin = True  # type: ignore[union-attr]  # our own marker on the handler, read back with getattr above
        root.addHandler(h)
    root.propagate = False


# --------------------------------------------------------------------------- stages


def _model_cfg(cfg: BuildConfig, splits: Splits) -> ModelConfig:
    return dataclasses.replace(cfg.model, input_shape=splits.input_shape, num_classes=splits.num_classes)


def stage_train(cfg: BuildConfig, run: RunFolder, splits: Splits, deadline=None) -> None:
    """The float model. ``deadline`` (pipeline.stages.plan.Deadline, --time-budget): held to while training."""
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
        replan = None
        if deadline is not None:
            from pipeline.stages.plan import holding_to

            replan = holding_to(deadline, cfg, run)
        _fit(run, model, train_ds, val_ds, cfg.train, steps, "train", replan=replan)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # Save a float32 copy (mixed precision only changes compute dtypes; weights are float32), built
    # outside any strategy. Every worker reads the weights: BatchNorm's statistics are all-reduced.
    final = build_model(mcfg)
    final.set_weights(model.get_weights())
    run.save_float(final)


def _fit(run: RunFolder, model, train_ds, val_ds, tcfg: TrainConfig, steps: int, tag: str, soft_targets: bool = False, replan=None) -> None:
    """train.fit into the run folder; the backup lives in the chief's folder (``run.shared``) on every worker."""
    from pipeline.stages import cluster
    from pipeline.train.fit import backed_up_epochs, fit

    backup = run.shared / CHECKPOINTS / tag
    cluster.agree([backed_up_epochs(backup)], f"the {tag} epochs already done (the backup in {backup})")
    fit(
        model,
        train_ds,
        val_ds,
        tcfg,
        steps_per_epoch=steps,
        run_dir=run.root,
        tag=tag,
        backup_dir=backup,
        soft_targets=soft_targets,
        replan=replan,
    )


def _warn_slow_on_cpu(cfg: BuildConfig, model, train_ds, n_train: int) -> None:
    """Measure this machine's speed on the real model and say up front how long the run takes."""
    from pipeline.train.fit import measure_throughput

    ips = measure_throughput(model, train_ds)
    # QAT steps cost about as much as float steps on the CPU, so one rate covers both.
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

    with writing(run.path(SIDECAR_NAME)):  # a full disk names the file
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
