"""The main job: data -> float training -> QAT -> TFLite conversion -> evaluation, into a run folder.

Each stage records its completion in ``state.json``; re-running a build on the same run
folder skips finished stages and resumes an unfinished training stage from its last
epoch checkpoint. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.fsutil import atomic_write_bytes, atomic_write_text, sha256_file
from edge_app.sidecar import InputSpec, OutputSpec, Quantization, Sidecar, write_sidecar

from . import __version__
from .convert import ConvertConfig, QatConfig
from .data import DataConfig, Splits
from .models import ModelConfig
from .train import TrainConfig

log = logging.getLogger("pipeline")

STAGES = ("train", "qat", "convert", "evaluate")
FLOAT_KERAS = "model_float.keras"
QAT_WEIGHTS = "model_qat.weights.h5"
FLOAT_TFLITE = "model_float32.tflite"
INT8_TFLITE = "model_int8.tflite"
PTQ_TFLITE = "model_int8_ptq.tflite"
EDGETPU_TFLITE = "model_int8_edgetpu.tflite"  # written by edgetpu_compiler


class RunError(Exception):
    """A problem with a run folder the user can fix."""


@dataclass(frozen=True)
class BuildConfig:
    data: DataConfig
    model: ModelConfig  # num_classes and input_shape are filled from the data
    train: TrainConfig
    qat: QatConfig
    convert: ConvertConfig
    profile: str = "quick"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BuildConfig":
        try:
            m = dict(d["model"])
            m["input_shape"] = tuple(m["input_shape"])
            return cls(
                data=DataConfig(**d["data"]), model=ModelConfig(**m), train=TrainConfig(**d["train"]),
                qat=QatConfig(**d["qat"]), convert=ConvertConfig(**d["convert"]), profile=d.get("profile", "quick"),
            )
        except (KeyError, TypeError) as exc:
            raise RunError(f"config.json does not describe a build ({exc}); start a new run folder") from None


@dataclass
class RunFolder:
    root: Path
    state: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def load_state(self) -> None:
        p = self.root / "state.json"
        if p.exists():
            try:
                self.state = json.loads(p.read_text())
            except json.JSONDecodeError:
                log.warning("state.json is unreadable; treating every stage as not done")
                self.state = {}

    def done(self, stage: str) -> bool:
        return bool(self.state.get(stage, {}).get("done"))

    def mark(self, stage: str, done: bool = True, **info: Any) -> None:
        self.state[stage] = {"done": done, "at": _now(), **info}
        if done:  # a redone stage makes every later stage stale
            for later in STAGES[STAGES.index(stage) + 1:]:
                self.state.pop(later, None)
        atomic_write_text(self.root / "state.json", json.dumps(self.state, indent=2) + "\n")

    def load_config(self) -> BuildConfig:
        if not self.config_path.exists():
            raise RunError(f"{self.root} is not a run folder (no config.json); run `nin-pipeline build --out {self.root}`")
        try:
            return BuildConfig.from_dict(json.loads(self.config_path.read_text()))
        except json.JSONDecodeError as exc:
            raise RunError(f"{self.config_path} is corrupt ({exc}); start a new run folder") from None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def setup_logging(run_dir: Path) -> None:
    """Log to the terminal and to ``train.log`` in the run folder (appended across resumes)."""
    root = logging.getLogger("pipeline")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_nin", False):
            root.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    fh = logging.FileHandler(run_dir / "train.log")
    fh.setFormatter(fmt)
    sh = logging.StreamHandler()
    sh.setFormatter(fmt)
    for h in (fh, sh):
        h._nin = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.propagate = False


def configure_devices() -> dict[str, Any]:
    """Use every GPU TensorFlow sees (growing memory), else all CPU cores."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for g in gpus:
        try:
            tf.config.experimental.set_memory_growth(g, True)
        except RuntimeError:
            pass
    info = {"gpus": len(gpus), "cpus": os.cpu_count(), "tensorflow": tf.__version__}
    if gpus:
        log.info("training on %d GPU(s) with mixed precision", len(gpus))
    else:
        log.info("no GPU visible to TensorFlow: training on the CPU (%d cores)", os.cpu_count() or 1)
    return info


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
    atomic_write_text(run.path("labels.txt"), "\n".join(splits.labels) + "\n")
    return splits


def _model_cfg(cfg: BuildConfig, splits: Splits) -> ModelConfig:
    want = (splits.input_shape, splits.num_classes)
    have = (tuple(cfg.model.input_shape), cfg.model.num_classes)
    if have != want:
        return dataclasses.replace(cfg.model, input_shape=splits.input_shape, num_classes=splits.num_classes)
    return cfg.model


def _datasets(cfg: BuildConfig, splits: Splits, batch_size: int, seed: int):
    from .data import make_dataset

    train = make_dataset(splits.x_train, splits.y_train, batch_size, training=True, hflip=splits.hflip, seed=seed)
    val = make_dataset(splits.x_val, splits.y_val, 256, training=False) if len(splits.y_val) else None
    steps = int(np.ceil(len(splits.y_train) / batch_size))
    return train.repeat(), val, steps


def stage_train(cfg: BuildConfig, run: RunFolder, splits: Splits) -> None:
    import tf_keras as keras

    from .models import build_model
    from .train import distribution_strategy, fit

    mcfg = _model_cfg(cfg, splits)
    gpu = bool(_gpus())
    if gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with distribution_strategy().scope():
            try:
                model = build_model(mcfg)
            except ValueError as exc:  # e.g. nin-imagenet on 32x32 images
                raise RunError(f"{exc}; pass --input-size or choose another --arch") from None
        log.info("model %s: %d parameters", model.name, model.count_params())
        train_ds, val_ds, steps = _datasets(cfg, splits, cfg.train.batch_size, cfg.train.seed)
        if not gpu and cfg.profile == "paper":
            _warn_slow_on_cpu(cfg, model, train_ds, len(splits.y_train))
        fit(model, train_ds, val_ds, cfg.train, steps_per_epoch=steps, run_dir=run.root, tag="train")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # Save a float32 copy (mixed precision only changes compute dtypes; weights are float32).
    final = build_model(mcfg)
    final.set_weights(model.get_weights())
    save_keras(final, run.path(FLOAT_KERAS))
    run.mark("train", epochs=cfg.train.epochs)


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

    float_model = load_float(run)
    freeze_batch_norm(float_model)
    qat_model = quantize(float_model)
    calib = representative_images(splits.x_train, splits.y_train, cfg.qat.calibration_samples, cfg.train.seed)
    ranges = calibrate_qat_ranges(qat_model, float_model, calib)
    log.info("qat: BatchNorm frozen; %d activation ranges calibrated on %d training images", len(ranges), len(calib))
    qcfg = TrainConfig(
        epochs=cfg.qat.epochs, batch_size=cfg.qat.batch_size, lr=cfg.qat.lr, momentum=cfg.train.momentum,
        weight_decay=0.0, schedule="cosine", warmup_epochs=0.0, seed=cfg.train.seed + 1,
    )
    if cfg.qat.epochs > 0:
        train_ds, val_ds, steps = _datasets(cfg, splits, qcfg.batch_size, qcfg.seed)
        fit(qat_model, train_ds, val_ds, qcfg, steps_per_epoch=steps, run_dir=run.root, tag="qat")
    else:
        log.info("qat: --qat-epochs 0, converting the QAT-wrapped model without fine-tuning")
    save_weights(qat_model, run.path(QAT_WEIGHTS))
    run.mark("qat", epochs=cfg.qat.epochs)


def stage_convert(cfg: BuildConfig, run: RunFolder, splits: Splits) -> None:
    from .convert import to_tflite_float, to_tflite_int8
    from .data import representative_images

    float_model = load_float(run)
    qat_model = load_qat(run)
    if cfg.convert.class_maps:
        from .models import with_class_maps

        float_model, qat_model = with_class_maps(float_model), with_class_maps(qat_model)
    rep = representative_images(splits.x_train, splits.y_train, cfg.convert.representative_samples, cfg.train.seed)
    t = time.time()
    atomic_write_bytes(run.path(FLOAT_TFLITE), to_tflite_float(float_model))
    atomic_write_bytes(run.path(INT8_TFLITE), to_tflite_int8(qat_model, rep, cfg.convert.io_type))
    atomic_write_bytes(run.path(PTQ_TFLITE), to_tflite_int8(float_model, rep, cfg.convert.io_type))
    log.info("convert: float32, QAT int8 and PTQ int8 .tflite written (%.0f s)", time.time() - t)
    write_sidecar(run.path("model.json"), make_sidecar(cfg, run, splits.labels))
    for stale in (EDGETPU_TFLITE, "model_int8_edgetpu.log", "edgetpu.json"):  # they described the old model
        run.path(stale).unlink(missing_ok=True)
    if cfg.convert.target == "edgetpu":
        edgetpu_stage(run)
    run.mark("convert")


def edgetpu_stage(run: RunFolder) -> None:
    """--target edgetpu: check model_int8.tflite against the Edge TPU's rules, then compile it when
    edgetpu_compiler is installed (x86-64 Linux); without it, say how to finish elsewhere."""
    from .edgetpu import EdgeTpuError, check_model, compile_model, record_in_run, verdict

    result = check_model(run.path(INT8_TFLITE))
    record_in_run(run.root, "check", result.to_dict())
    log.info("edgetpu check: %s", verdict(result))
    try:
        compiled = compile_model(run.path(INT8_TFLITE))
    except EdgeTpuError as exc:
        log.warning("edgetpu: not compiled here (%s). Then: nin-pipeline edgetpu compile %s", exc, run.root)
        return
    record_compiled(run.root, compiled)


def record_compiled(run_dir: Path, compiled) -> None:
    """The compiler's summary into edgetpu.json and the report; the compiled model's hash into model.json."""
    from edge_app.sidecar import read_sidecar

    from .edgetpu import record_in_run

    record_in_run(run_dir, "compile", {k: v for k, v in compiled.to_dict().items() if k != "log"})
    out = Path(compiled.output)
    sidecar_path = run_dir / "model.json"
    if out.parent.resolve() == run_dir.resolve() and sidecar_path.is_file():
        sc = read_sidecar(sidecar_path)
        write_sidecar(sidecar_path, dataclasses.replace(sc, files={**sc.files, out.name: sha256_file(out)}))
    log.info("edgetpu: %s of %s operations mapped to the Edge TPU -> %s", compiled.ops_on_tpu, compiled.ops_total, out)


def _quant(detail: dict) -> Quantization:
    return Quantization(float(detail["quantization"][0]), int(detail["quantization"][1]))


def make_sidecar(cfg: BuildConfig, run: RunFolder, labels: tuple[str, ...]) -> Sidecar:
    """Describe ``model_int8.tflite`` from the model's own tensors, so the two never disagree.

    Outputs are told apart by rank: the scores are [1, classes]; the class maps, when
    exported, [1, H, W, classes]."""
    from edge_app.runtime import load_interpreter

    interp, _ = load_interpreter(run.path(INT8_TFLITE), num_threads=1)
    i = interp.get_input_details()[0]
    shape = tuple(int(v) for v in i["shape"])
    channels = shape[-1]
    outputs = []
    for o in sorted(interp.get_output_details(), key=lambda d: len(d["shape"])):
        rank = len(o["shape"])
        name, kind = ("scores", "probabilities") if rank == 2 else ("class_maps", "class_maps")
        outputs.append(OutputSpec(name=name, shape=tuple(int(v) for v in o["shape"]), dtype=np.dtype(o["dtype"]).name,
                                  kind=kind, quant=_quant(o)))
    return Sidecar(
        labels=tuple(labels),
        input=InputSpec(
            shape=shape, dtype=np.dtype(i["dtype"]).name, layout="NHWC",
            color_order="GRAY" if channels == 1 else "RGB", pixel_scale=1.0 / 255.0, value_range=(0.0, 1.0),
            mean=(0.0,) * channels, std=(1.0,) * channels, quant=_quant(i),
        ),
        outputs=tuple(outputs),
        dataset=cfg.data.dataset, arch=cfg.model.arch, width=cfg.model.width,
        files={n: sha256_file(run.path(n)) for n in (INT8_TFLITE, FLOAT_TFLITE, PTQ_TFLITE) if run.path(n).exists()},
        pipeline_version=__version__, created=_now(),
    )


def stage_evaluate(cfg: BuildConfig, run: RunFolder, splits: Splits) -> dict[str, Any]:
    """Every variant on the test split (the only place the test split is used), then the report."""
    from .report import build_report, evaluate_run, print_table

    log.info("evaluate: %d test images through float Keras, float TFLite, PTQ int8 and QAT int8", len(splits.y_test))
    preds = evaluate_run(run.root, splits.x_test, splits.y_test, splits.labels)
    report = build_report(run.root, preds, splits.y_test, splits.labels, x=splits.x_test, meta=report_meta(cfg))
    log.info("report: report.json, report.md, report.html and %d plots written", len(report["plots"]))
    print_table(report)
    run.mark("evaluate")
    return report


def report_meta(cfg: BuildConfig) -> dict[str, Any]:
    return {"dataset": cfg.data.dataset, "arch": cfg.model.arch, "width": cfg.model.width,
            "pipeline_version": __version__}


# --------------------------------------------------------------------------- model files

def _gpus() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def _atomic_save(path: Path, suffix: str, save) -> None:
    """Keras picks the file format from the name's ending, so the temporary name keeps it."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_keras(model, path: Path) -> None:
    _atomic_save(path, ".keras", model.save)


def save_weights(model, path: Path) -> None:
    _atomic_save(path, ".weights.h5", model.save_weights)


def load_float(run: RunFolder):
    import tf_keras as keras

    p = run.path(FLOAT_KERAS)
    if not p.exists():
        raise RunError(f"{run.root} has no {FLOAT_KERAS}: run `nin-pipeline train {run.root}` first")
    try:
        return keras.models.load_model(p, compile=False)
    except Exception as exc:  # h5py/zip/keras raise many kinds for a damaged file
        raise RunError(f"{p} is unreadable ({type(exc).__name__}); redo it with `nin-pipeline train {run.root}`") from None


def load_qat(run: RunFolder):
    from .convert import freeze_batch_norm, quantize

    p = run.path(QAT_WEIGHTS)
    if not p.exists():
        raise RunError(f"{run.root} has no {QAT_WEIGHTS}: run `nin-pipeline qat {run.root}` first")
    float_model = load_float(run)
    freeze_batch_norm(float_model)  # the same structure as when the weights were saved
    model = quantize(float_model)
    try:
        model.load_weights(p)
    except Exception as exc:
        raise RunError(f"{p} is unreadable ({type(exc).__name__}); redo it with `nin-pipeline qat {run.root}`") from None
    return model


# --------------------------------------------------------------------------- orchestration

def init_run(cfg: BuildConfig, out: Path) -> RunFolder:
    """Create the run folder and config.json, or reopen one with the same config."""
    out.mkdir(parents=True, exist_ok=True)
    run = RunFolder(out)
    if run.config_path.exists():
        saved = run.load_config()
        diffs = _diff(saved.to_dict(), cfg.to_dict())
        if diffs:
            raise RunError(
                f"{out} was started with other settings ({'; '.join(diffs[:4])}). "
                "Resume it with the same options (or `--resume` alone), or choose a new --out"
            )
    else:
        atomic_write_text(run.config_path, json.dumps(cfg.to_dict(), indent=2) + "\n")
    run.load_state()
    setup_logging(out)
    return run


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif (list(va) if isinstance(va, (list, tuple)) else va) != (list(vb) if isinstance(vb, (list, tuple)) else vb):
            out.append(f"{prefix}{k}: {va!r} then, {vb!r} now")
    return out


def run_stages(run: RunFolder, stages: tuple[str, ...] = STAGES, force: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``stages`` in order, skipping those already done unless forced."""
    cfg = run.load_config()
    info = configure_devices()
    log.info("run folder %s (nin-pipeline %s, TensorFlow %s)", run.root, __version__, info["tensorflow"])
    todo = [s for s in stages if s in force or not run.done(s)]
    if not todo:
        log.info("every stage is already done; nothing to do")
        return _read_report(run)
    splits = load_data(cfg, run)
    report: dict[str, Any] = {}
    t0 = time.time()
    for stage in STAGES:
        # re-checked each time: redoing a stage makes every later stage stale (RunFolder.mark)
        if stage not in stages or not (stage in force or not run.done(stage)):
            continue
        t = time.time()
        log.info("stage %s ...", stage)
        if stage == "train":
            stage_train(cfg, run, splits)
        elif stage == "qat":
            stage_qat(cfg, run, splits)
        elif stage == "convert":
            stage_convert(cfg, run, splits)
        elif stage == "evaluate":
            report = stage_evaluate(cfg, run, splits)
        log.info("stage %s done in %.0f s", stage, time.time() - t)
        _add_timing(run, stage, time.time() - t)
    log.info("finished in %.0f s; run folder: %s", time.time() - t0, run.root)
    return report or _read_report(run)


def _add_timing(run: RunFolder, stage: str, seconds: float) -> None:
    run.state.setdefault(stage, {})["seconds"] = round(seconds, 1)
    atomic_write_text(run.root / "state.json", json.dumps(run.state, indent=2) + "\n")


def _read_report(run: RunFolder) -> dict[str, Any]:
    p = run.path("report.json")
    return json.loads(p.read_text()) if p.exists() else {}
