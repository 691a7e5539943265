"""The main job: data -> float training -> QAT -> TFLite conversion -> evaluation, into a run folder.

Each stage records its completion (and seconds) in ``state.json``; re-running a build on the
same run folder skips finished stages and resumes an unfinished training stage from its last
epoch checkpoint. The run folder's files are read and written through ``pipeline.run``.
The functions at the end are what the ``nin-pipeline`` commands call, one each.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import BuildConfig, make_build_config, with_target
from .data import Splits
from .errors import ReportError, RunError
from .models import ModelConfig
from .run import (
    CHECKPOINTS,
    CONFIG_JSON,
    EDGETPU_JSON,
    EDGETPU_LOG,
    EDGETPU_TFLITE,
    FLOAT_TFLITE,
    INT8_TFLITE,
    PREDICTIONS,
    PTQ_TFLITE,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_MD,
    SIDECAR_NAME,
    STAGES,
    TRAIN_LOG,
    RunFolder,
    history_csv,
)
from .train import TrainConfig

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

def load_data(cfg: BuildConfig, run: RunFolder) -> Splits:
    from .data import make_splits

    t = time.time()
    splits = make_splits(cfg.data)
    log.info(
        "data: %s from %s: %d train, %d validation, %d test, %d classes, images %s (%.0f s)%s",
        cfg.data.dataset, splits.source, len(splits.y_train), len(splits.y_val), len(splits.y_test),
        splits.num_classes, "x".join(map(str, splits.input_shape)), time.time() - t,
        f"; skipped {splits.skipped} unreadable file(s)" if splits.skipped else "",
    )
    run.write_labels(splits.labels)
    return splits


def _model_cfg(cfg: BuildConfig, splits: Splits) -> ModelConfig:
    return dataclasses.replace(cfg.model, input_shape=splits.input_shape, num_classes=splits.num_classes)


def _datasets(splits: Splits, batch_size: int, seed: int):
    from .data import make_dataset

    train = make_dataset(splits.x_train, splits.y_train, batch_size, training=True, hflip=splits.hflip, seed=seed)
    val = make_dataset(splits.x_val, splits.y_val, 256, training=False) if len(splits.y_val) else None
    steps = int(np.ceil(len(splits.y_train) / batch_size))
    return train.repeat(), val, steps


def stage_train(cfg: BuildConfig, run: RunFolder, splits: Splits) -> None:
    import tensorflow as tf
    import tf_keras as keras

    from .devices import mixed_precision_wanted
    from .models import build_model
    from .train import distribution_strategy, fit

    mcfg = _model_cfg(cfg, splits)
    mixed = mixed_precision_wanted()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        strategy = distribution_strategy()
        with strategy.scope():
            try:
                model = build_model(mcfg)
            except ValueError as exc:  # e.g. nin-imagenet on 32x32 images
                raise RunError(str(exc), "pass --input-size or choose another --arch") from None
        log.info("model %s: %d parameters; %d replica(s) (%s), policy %s", model.name, model.count_params(),
                 strategy.num_replicas_in_sync, type(strategy).__name__, keras.mixed_precision.global_policy().name)
        train_ds, val_ds, steps = _datasets(splits, cfg.train.batch_size, cfg.train.seed)
        if not tf.config.list_physical_devices("GPU") and cfg.profile == "paper":
            _warn_slow_on_cpu(cfg, model, train_ds, len(splits.y_train))
        fit(model, train_ds, val_ds, cfg.train, steps_per_epoch=steps, run_dir=run.root, tag="train")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # Save a float32 copy (mixed precision only changes compute dtypes; weights are float32).
    final = build_model(mcfg)
    final.set_weights(model.get_weights())
    run.save_float(final)


def _warn_slow_on_cpu(cfg: BuildConfig, model, train_ds, n_train: int) -> None:
    """Measure this machine's speed on the real model and say up front how long the run takes."""
    from .train import measure_throughput

    ips = measure_throughput(model, train_ds)
    # QAT steps cost about as much as float steps on the CPU (measured: within 5% at width 0.25).
    hours = (cfg.train.epochs + cfg.qat.epochs) * n_train / ips / 3600
    log.warning(
        "profile %s on the CPU: measured %.0f training images/s here, so %d + %d epochs of %d images "
        "take about %.0f hours (%.1f days). It is meant for a GPU; for a CPU run use --profile quick. "
        "Interrupt with Ctrl-C at any time: the run resumes from its last epoch.",
        cfg.profile, ips, cfg.train.epochs, cfg.qat.epochs, n_train, hours, hours / 24,
    )


def stage_qat(cfg: BuildConfig, run: RunFolder, splits: Splits) -> None:
    from .convert import calibrate_qat_ranges, freeze_batch_norm, quantize
    from .data import representative_images
    from .train import fit

    # QAT runs on one device, in float32 (tfmot's fake-quant ops take no float16). Under
    # MirroredStrategy (two logical CPUs, tf_keras 2.21, tfmot 0.8.1) its first step failed with
    # "Shape mismatch in the collective instance ... expected shape [16728] but another member
    # ... expected shape [17092]": the replicas packed different gradients.
    float_model = run.load_float()
    freeze_batch_norm(float_model)
    qat_model = quantize(float_model)
    log.info("qat: on one device, float32")
    calib = representative_images(splits.x_train, splits.y_train, cfg.qat.calibration_samples, cfg.train.seed)
    ranges = calibrate_qat_ranges(qat_model, float_model, calib)
    log.info("qat: BatchNorm frozen; %d activation ranges calibrated on %d training images", len(ranges), len(calib))
    qcfg = TrainConfig(
        epochs=cfg.qat.epochs, batch_size=cfg.qat.batch_size, lr=cfg.qat.lr, momentum=cfg.train.momentum,
        weight_decay=0.0, schedule="cosine", warmup_epochs=0.0, seed=cfg.train.seed + 1,
    )
    if cfg.qat.epochs > 0:
        train_ds, val_ds, steps = _datasets(splits, qcfg.batch_size, qcfg.seed)
        fit(qat_model, train_ds, val_ds, qcfg, steps_per_epoch=steps, run_dir=run.root, tag="qat")
    else:
        log.info("qat: --qat-epochs 0, converting the QAT-wrapped model without fine-tuning")
    run.save_qat(qat_model)


def stage_convert(cfg: BuildConfig, run: RunFolder, splits: Splits) -> None:
    from .convert import describe_tflite, to_tflite_float, to_tflite_int8
    from .data import representative_images

    float_model, qat_model = run.load_float(), run.load_qat()
    if cfg.convert.class_maps:
        from .models import with_class_maps

        float_model, qat_model = with_class_maps(float_model), with_class_maps(qat_model)
    rep = representative_images(splits.x_train, splits.y_train, cfg.convert.representative_samples, cfg.train.seed)
    t = time.time()
    run.write_bytes(FLOAT_TFLITE, to_tflite_float(float_model))
    run.write_bytes(INT8_TFLITE, to_tflite_int8(qat_model, rep, cfg.convert.io_type))
    run.write_bytes(PTQ_TFLITE, to_tflite_int8(float_model, rep, cfg.convert.io_type))
    log.info("convert: float32, QAT int8 and PTQ int8 .tflite written (%.0f s)", time.time() - t)
    sidecar = describe_tflite(run.path(INT8_TFLITE), splits.labels, dataset=cfg.data.dataset, arch=cfg.model.arch,
                              width=cfg.model.width, hashed=[run.path(n) for n in (INT8_TFLITE, FLOAT_TFLITE, PTQ_TFLITE)])
    from edge_app.sidecar import write_sidecar

    write_sidecar(run.path(SIDECAR_NAME), sidecar)
    for stale in (EDGETPU_TFLITE, EDGETPU_LOG, EDGETPU_JSON):  # they described the old model
        run.path(stale).unlink(missing_ok=True)
    if cfg.convert.target == "edgetpu":
        edgetpu_stage(run)


def evaluate_and_report(cfg: BuildConfig, run: RunFolder, splits: Splits, *, rerun: bool = True,
                        latency: bool = True) -> dict[str, Any]:
    """Every variant on the test split (the only place the test split is used), then the report files.
    ``rerun=False`` reuses predictions.npz when it holds these test images. Shared by `build` and `report`."""
    from .plots import make_plots
    from .render import print_table
    from .report import VARIANTS, build_report, predict_variants
    from .train import read_history

    float_model = run.load_float()  # once: the float predictions and the report's parameter count
    preds = None
    if not rerun and run.path(PREDICTIONS).exists():
        preds, y, _ = run.load_predictions(VARIANTS)
        if not np.array_equal(y, splits.y_test):
            raise RunError(f"{run.root}/{PREDICTIONS} is for other test images than the data gives now", "pass --rerun")
    if preds is None:
        log.info("evaluate: %d test images through float Keras, float TFLite, PTQ int8 and QAT int8", len(splits.y_test))
        preds = predict_variants(run, splits.x_test, float_model=float_model)
        run.save_predictions(preds, splits.y_test, splits.labels)
    meta = {"dataset": cfg.data.dataset, "arch": cfg.model.arch, "width": cfg.model.width, "pipeline_version": __version__}
    report = build_report(run, preds, splits.y_test, splits.labels, x=splits.x_test, meta=meta, latency=latency,
                          float_model=float_model)
    history = {tag: read_history(run.path(history_csv(tag))) for tag in ("train", "qat")}
    pngs = make_plots(report, preds, splits.y_test, splits.labels, splits.x_test, history)
    write_report(run, report, pngs)
    log.info("report: %s, %s, %s and %d plots written", REPORT_JSON, REPORT_MD, REPORT_HTML, len(pngs))
    print_table(report)
    return report


def write_report(run: RunFolder, report: dict[str, Any], pngs: dict[str, bytes] | None = None) -> None:
    """The plots (when given), then report.json, report.md and report.html, each written atomically.
    Without ``pngs`` the plots already in the folder are inlined into the HTML."""
    from .render import render_html, render_markdown

    if pngs is not None:
        for name, data in pngs.items():
            run.write_bytes(name, data)
        report["plots"] = {name.removesuffix(".png"): name for name in pngs}
    names = report.get("plots", {}).values()
    images = {n: run.path(n).read_bytes() for n in names if run.path(n).is_file()}
    run.write_json(REPORT_JSON, report)
    run.write_text(REPORT_MD, render_markdown(report))
    run.write_text(REPORT_HTML, render_html(report, images))


# --------------------------------------------------------------------------- Edge TPU

def edgetpu_stage(run: RunFolder) -> None:
    """--target edgetpu: check model_int8.tflite against the Edge TPU's rules, then compile it when
    edgetpu_compiler is installed (x86-64 Linux); without it, say how to finish elsewhere."""
    from .edgetpu import EdgeTpuError, check_model, compile_model, verdict

    result = check_model(run.path(INT8_TFLITE))
    record_edgetpu(run, "check", result.to_dict())
    log.info("edgetpu check: %s", verdict(result))
    try:
        compiled = compile_model(run.path(INT8_TFLITE))
    except EdgeTpuError as exc:
        log.warning("edgetpu: not compiled here (%s). Then: nin-pipeline edgetpu compile %s", exc, run.root)
        return
    record_compiled(run, compiled)


def record_edgetpu(run: RunFolder, key: str, value: dict[str, Any]) -> None:
    """Keep a check/compile summary in edgetpu.json and in the report files (when there is a report)."""
    data = {**run.read_edgetpu(), key: value}
    run.write_json(EDGETPU_JSON, data)
    if run.path(REPORT_JSON).is_file():
        try:
            report = run.read_report()
        except ReportError:
            return  # a damaged report is rebuilt by `nin-pipeline report`, which reads edgetpu.json
        report["edgetpu"] = data
        write_report(run, report)


def record_compiled(run: RunFolder, compiled) -> None:
    """The compiler's summary into edgetpu.json and the report; the compiled model's hash into model.json."""
    from edge_app.fsutil import sha256_file
    from edge_app.sidecar import read_sidecar, write_sidecar

    record_edgetpu(run, "compile", {k: v for k, v in compiled.to_dict().items() if k != "log"})
    out = Path(compiled.output)
    sidecar_path = run.path(SIDECAR_NAME)
    if out.parent.resolve() == run.root.resolve() and sidecar_path.is_file():
        sc = read_sidecar(sidecar_path)
        write_sidecar(sidecar_path, dataclasses.replace(sc, files={**sc.files, out.name: sha256_file(out)}))
    log.info("edgetpu: %s of %s operations mapped to the Edge TPU -> %s", compiled.ops_on_tpu, compiled.ops_total, out)


# --------------------------------------------------------------------------- orchestration

STAGE_FUNCTIONS = {"train": stage_train, "qat": stage_qat, "convert": stage_convert, "evaluate": evaluate_and_report}


def run_stages(run: RunFolder, stages: tuple[str, ...] = STAGES, force: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``stages`` in order, skipping those already done unless forced; each is marked done with its seconds."""
    cfg = run.load_config()
    from .devices import configure_devices

    info = configure_devices()
    log.info("run folder %s (nin-pipeline %s, TensorFlow %s)", run.root, __version__, info["tensorflow"])
    if not [s for s in stages if s in force or not run.done(s)]:
        log.info("every stage is already done; nothing to do")
        return run.read_report_if_any()
    splits = load_data(cfg, run)
    t0 = time.time()
    for stage in STAGES:
        # re-checked each time: redoing a stage makes every later stage stale (RunFolder.mark)
        if stage not in stages or not (stage in force or not run.done(stage)):
            continue
        t = time.time()
        log.info("stage %s ...", stage)
        STAGE_FUNCTIONS[stage](cfg, run, splits)
        log.info("stage %s done in %.0f s", stage, time.time() - t)
        run.mark(stage, seconds=time.time() - t)
    log.info("finished in %.0f s; run folder: %s", time.time() - t0, run.root)
    return run.read_report_if_any()


def build(*, dataset: str, data_dir: Path | None, out: Path | None, profile: str, arch: str,
          overrides: dict[str, Any], val_fraction: float, io_type: str | None, target: str, class_maps: bool,
          seed: int, resume: bool, data_cache: str | None = None, memory_budget_gb: float | None = None) -> RunFolder:
    """`nin-pipeline build`: a new run folder (or the one at ``out``, resumed), every stage to the end.
    ``overrides``: the profile's settings the user set explicitly. ``resume`` without ``out``: the newest
    matching run in artifacts/."""
    from .datasets import resolve_source

    if resume and out is None:
        runs = sorted(p for p in Path("artifacts").glob(f"{dataset}-{arch}-*") if (p / CONFIG_JSON).exists())
        if not runs:
            raise RunError(f"--resume: no run folder artifacts/{dataset}-{arch}-* to resume", "pass --out RUN")
        out = runs[-1]
    if resume and not overrides:
        run = RunFolder.open(out)
        if data_cache is not None or memory_budget_gb is not None:  # how the data is held may change on resume
            cfg = run.load_config()
            run.save_config(dataclasses.replace(cfg, data=dataclasses.replace(
                cfg.data, cache=data_cache or cfg.data.cache, memory_budget_gb=memory_budget_gb)))
    else:
        if resume and not (out / CONFIG_JSON).exists():
            raise RunError(f"--resume: {out} is not a run folder (no {CONFIG_JSON})", "leave out --resume to start it")
        resolve_source(dataset, data_dir)  # a wrong --data-dir fails before any folder is made
        cfg = make_build_config(dataset, data_dir, profile, arch, overrides, val_fraction, io_type, seed, class_maps, target,
                                data_cache or "auto", memory_budget_gb)
        out = out or Path("artifacts") / f"{dataset}-{arch}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        run = RunFolder.create(out, cfg)
    setup_logging(run.root)
    run_stages(run)
    return run


def redo_stage(run_dir: Path, stage: str, target: str | None = None) -> RunFolder:
    """`nin-pipeline train|qat|convert RUN`: redo one stage (from scratch), then every later one.
    ``target`` (convert only) converts for another target from now on."""
    import shutil

    run = RunFolder.open(run_dir)
    setup_logging(run.root)
    if target is not None:
        run.save_config(with_target(run.load_config(), target))
    if run.done(stage) and stage in ("train", "qat"):
        shutil.rmtree(run.path(CHECKPOINTS) / stage, ignore_errors=True)  # redo from scratch
    # the stage itself is forced; the later ones run because redoing it made them stale
    run_stages(run, STAGES[STAGES.index(stage):], force=(stage,))
    return run


def rewrite_report(run_dir: Path, *, rerun: bool = False, latency: bool = True) -> Path:
    """`nin-pipeline report RUN`: the report files again, from saved predictions unless ``rerun``."""
    run = RunFolder.open(run_dir)
    cfg = run.load_config()
    if not run.path(INT8_TFLITE).exists():
        raise RunError(f"{run_dir} has no models yet", f"finish it with `nin-pipeline build --resume --out {run_dir}`")
    setup_logging(run.root)
    evaluate_and_report(cfg, run, load_data(cfg, run), rerun=rerun, latency=latency)
    return run.path(REPORT_HTML)


def edgetpu_check(model: Path):
    """`nin-pipeline edgetpu check`: a .tflite, or a run folder's int8 model (the run then records the result)."""
    from edge_app.runfiles import resolve_model_path

    from .edgetpu import check_model

    result = check_model(resolve_model_path(model))
    if Path(model).is_dir():
        record_edgetpu(RunFolder(model), "check", result.to_dict())
    return result


def edgetpu_compile(model: Path, out_dir: Path | None = None, *, compiler: str | None = None, timeout: float = 600.0):
    """`nin-pipeline edgetpu compile`: like :func:`edgetpu_check`, the run folder records the compiler's summary."""
    from edge_app.runfiles import resolve_model_path

    from .edgetpu import compile_model

    result = compile_model(resolve_model_path(model), out_dir, compiler=compiler, timeout=timeout)
    if Path(model).is_dir():
        record_compiled(RunFolder(model), result)
    return result
