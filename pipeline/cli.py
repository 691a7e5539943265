"""`nin-pipeline`: thin click commands over plain functions in pipeline.build."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import sys
from pathlib import Path

import click

from . import __version__
from .convert import IO_TYPES, TARGETS
from .data import DATASETS
from .models import ARCHS
from .profiles import PROFILES


def _legacy_keras_env() -> None:
    """tfmot needs Keras 2 (tf_keras): this must be set before TensorFlow is first imported."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _user_errors(fn):
    """Turn the errors a user can fix into one clear message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from edge_app.runtime import ModelLoadError, RuntimeNotFound
        from edge_app.sidecar import SidecarError

        from .build import RunError
        from .data import DataError
        from .edgetpu import EdgeTpuError
        from .package import PackageError
        from .report import ReportError

        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("\ninterrupted: finished epochs are checkpointed; run the same command again "
                       "(or `nin-pipeline build --resume --out RUN`) to continue.", err=True)
            sys.exit(130)
        except (DataError, RunError, ReportError, SidecarError, ModelLoadError, RuntimeNotFound, FloatingPointError,
                EdgeTpuError, PackageError) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a folder that cannot be written, a full disk, ...
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}; choose a writable place (--out, --json, --markdown)") from None
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("tensorflow", "tf_keras", "tensorflow_model_optimization", "PIL", "tqdm"):
                raise click.ClickException(
                    f"the training stack is not installed ({exc.name} is missing): pip install 'nin-pipeline[train]' "
                    "(from a clone: pip install '.[train]')") from None
            raise

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nin-pipeline")
def cli() -> None:
    """Train Network-in-Network, fine-tune it with QAT, and export a fully int8 TFLite model."""
    _legacy_keras_env()


def main(argv: list[str] | None = None) -> None:
    _legacy_keras_env()
    cli.main(args=argv, prog_name="nin-pipeline")


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be greater than 0, got {value}")
    return value


def _non_negative(ctx, param, value):
    if value is not None and value < 0:
        raise click.BadParameter(f"must be 0 or more, got {value}")
    return value


@cli.command()
@click.option("--dataset", type=click.Choice(DATASETS), default=None, help="Dataset (default cifar10).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, envvar="NIN_DATA_DIR",
              help="Folder or archive with the data (env NIN_DATA_DIR); else the Keras cache or download.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default artifacts/<dataset>-<arch>-<timestamp>). Re-running on it resumes.")
@click.option("--profile", type=click.Choice(list(PROFILES)), default="quick", show_default=True,
              help="quick: small width, CPU-friendly. paper: the paper's recipe, for a GPU.")
@click.option("--arch", type=click.Choice(list(ARCHS)), default="nin-cifar", show_default=True)
@click.option("--width", type=float, default=None, callback=_positive, help="Channel width multiplier.")
@click.option("--input-size", type=int, default=None, callback=_positive,
              help="Resize images to N x N (image folders, nin-imagenet). Default: the data's own size.")
@click.option("--epochs", type=int, default=None, callback=_positive, help="Float training epochs.")
@click.option("--qat-epochs", type=int, default=None, callback=_non_negative, help="QAT fine-tuning epochs.")
@click.option("--batch-size", type=int, default=None, callback=_positive)
@click.option("--lr", type=float, default=None, callback=_positive, help="Peak learning rate.")
@click.option("--dropout", type=click.FloatRange(0, 0.95), default=None)
@click.option("--limit-train", type=int, default=None, callback=_positive, help="Stratified train subset (smoke runs).")
@click.option("--limit-test", type=int, default=None, callback=_positive, help="Stratified test subset.")
@click.option("--val-fraction", type=click.FloatRange(0, 0.5), default=0.1, show_default=True,
              help="Share of train held out for validation.")
@click.option("--io-type", type=click.Choice(IO_TYPES), default=None,
              help="int8 model input/output type: int8 (default), or uint8 for runtimes that want it.")
@click.option("--target", type=click.Choice(TARGETS), default="cpu", show_default=True,
              help="edgetpu: uint8 input/output, checked against the Edge TPU's rules, compiled if edgetpu_compiler is installed.")
@click.option("--class-maps/--no-class-maps", default=True, show_default=True,
              help="Export the per-class confidence maps as a second model output (edge-app --heatmap uses them).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run (--out, or the newest matching one in artifacts/).")
@_user_errors
def build(dataset, data_dir, out, profile, arch, width, input_size, epochs, qat_epochs, batch_size, lr, dropout,
          limit_train, limit_test, val_fraction, io_type, target, class_maps, seed, resume) -> None:
    """Train NiN, fine-tune it with QAT, convert to int8 TFLite and evaluate: one run folder."""
    from .build import RunError, init_run, run_stages

    io_type = _io_for_target(target, io_type)
    explicit = {k: v for k, v in dict(width=width, input_size=input_size, epochs=epochs, qat_epochs=qat_epochs,
                                       batch_size=batch_size, lr=lr, dropout=dropout, limit_train=limit_train,
                                       limit_test=limit_test).items() if v is not None}
    dataset = dataset or "cifar10"
    if resume and out is None:
        out = _newest_run(dataset, arch)
        if out is None:
            raise RunError(f"--resume: no run folder artifacts/{dataset}-{arch}-* to resume; pass --out RUN")
    if resume and (out / "config.json").exists() and not explicit:
        from .build import RunFolder, setup_logging

        run = RunFolder(out)
        run.load_state()
        setup_logging(out)
    else:
        if resume and not (out / "config.json").exists():
            raise RunError(f"--resume: {out} is not a run folder (no config.json)")
        from .data import resolve_source

        resolve_source(dataset, data_dir)  # a wrong --data-dir fails before any folder is made
        cfg = make_build_config(dataset, data_dir, profile, arch, explicit, val_fraction, io_type, seed, class_maps,
                                target)
        if out is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("artifacts") / f"{dataset}-{arch}-{stamp}"
        run = init_run(cfg, out)
    run_stages(run)
    click.echo(f"run folder: {run.root}")


def make_build_config(dataset: str, data_dir: Path | None, profile: str, arch: str, explicit: dict, val_fraction: float,
                      io_type: str, seed: int, class_maps: bool = True, target: str = "cpu"):
    from .build import BuildConfig
    from .convert import ConvertConfig, QatConfig
    from .data import DataConfig
    from .models import ModelConfig
    from .train import TrainConfig

    p = {**PROFILES[profile], **explicit}
    input_size = p.get("input_size")
    if arch == "nin-imagenet" and input_size is None and dataset in ("folder",):
        input_size = ARCHS[arch].default_input_size
    return BuildConfig(
        data=DataConfig(dataset=dataset, data_dir=str(data_dir.expanduser().resolve()) if data_dir else None,
                        input_size=input_size, val_fraction=val_fraction, limit_train=p.get("limit_train"),
                        limit_test=p.get("limit_test"), seed=seed),
        model=ModelConfig(arch=arch, width=float(p["width"]), dropout=float(p["dropout"])),
        train=TrainConfig(epochs=int(p["epochs"]), batch_size=int(p["batch_size"]), lr=float(p["lr"]),
                          weight_decay=float(p["weight_decay"]), schedule=str(p["schedule"]),
                          warmup_epochs=float(p["warmup_epochs"]), seed=seed),
        qat=QatConfig(epochs=int(p["qat_epochs"]), lr=float(p["qat_lr"]), batch_size=int(p["batch_size"])),
        convert=ConvertConfig(io_type=io_type, class_maps=class_maps, target=target),
        profile=profile,
    )


def _io_for_target(target: str, io_type: str | None) -> str:
    """The Edge TPU (and pycoral) want uint8 input and output."""
    if target == "edgetpu":
        if io_type == "int8":
            raise click.BadParameter("--target edgetpu takes uint8 input and output; leave out --io-type int8", param_hint="--io-type")
        return "uint8"
    return io_type or "int8"


def _newest_run(dataset: str, arch: str) -> Path | None:
    runs = sorted(p for p in Path("artifacts").glob(f"{dataset}-{arch}-*") if (p / "config.json").exists())
    return runs[-1] if runs else None


STAGE_COMMANDS = {
    "train": "Redo (or resume) float training in RUN_DIR, then QAT, conversion and evaluation.",
    "qat": "Redo quantisation-aware fine-tuning in RUN_DIR, then conversion and evaluation.",
    "convert": "Redo the TFLite conversion in RUN_DIR, then the evaluation.",
}


def _stage_command(name: str):
    def target_option(f):
        if name != "convert":
            return f
        return click.option("--target", type=click.Choice(TARGETS), default=None,
                            help="Convert for this target from now on (edgetpu: uint8 I/O, check, compile). "
                                 "Default: the run's own.")(f)

    @cli.command(name=name, help=STAGE_COMMANDS[name])
    @click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
    @target_option
    @_user_errors
    def cmd(run_dir: Path, target: str | None = None) -> None:
        import dataclasses
        import shutil

        from .build import STAGES, RunError, RunFolder, run_stages, setup_logging

        if not (run_dir / "config.json").exists():
            raise RunError(f"{run_dir} is not a run folder (no config.json); create one with `nin-pipeline build`")
        run = RunFolder(run_dir)
        run.load_state()
        setup_logging(run_dir)
        if target is not None:
            from edge_app.fsutil import atomic_write_text

            cfg = run.load_config()
            conv = dataclasses.replace(cfg.convert, target=target,
                                       io_type=_io_for_target(target, None if target == "edgetpu" else cfg.convert.io_type))
            atomic_write_text(run.config_path, json.dumps(dataclasses.replace(cfg, convert=conv).to_dict(), indent=2) + "\n")
        if run.done(name) and name in ("train", "qat"):
            shutil.rmtree(run_dir / "checkpoints" / name, ignore_errors=True)  # redo from scratch
        # the stage itself is forced; the later ones run because redoing it made them stale
        run_stages(run, STAGES[STAGES.index(name):], force=(name,))
        click.echo(f"run folder: {run.root}")

    return cmd


for _name in STAGE_COMMANDS:
    _stage_command(_name)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--rerun", is_flag=True, help="Run every model on the test split again instead of reusing predictions.npz.")
@click.option("--no-latency", is_flag=True, help="Skip the latency measurement.")
@_user_errors
def report(run_dir: Path, rerun: bool, no_latency: bool) -> None:
    """(Re)write report.json, report.md, report.html and the plots of RUN_DIR."""
    import numpy as np

    from .build import RunError, RunFolder, load_data, report_meta, setup_logging
    from .report import PREDICTIONS, build_report, evaluate_run, load_predictions, print_table

    run = RunFolder(run_dir)
    cfg = run.load_config()
    if not run_dir.joinpath("model_int8.tflite").exists():
        raise RunError(f"{run_dir} has no models yet: finish it with `nin-pipeline build --resume --out {run_dir}`")
    setup_logging(run_dir)
    splits = load_data(cfg, run)
    if rerun or not (run_dir / PREDICTIONS).exists():
        preds = evaluate_run(run_dir, splits.x_test, splits.y_test, splits.labels)
    else:
        preds, y, labels = load_predictions(run_dir)
        if not np.array_equal(y, splits.y_test):
            raise RunError(f"{run_dir}/{PREDICTIONS} is for other test images than the data gives now; pass --rerun")
    rep = build_report(run_dir, preds, splits.y_test, splits.labels, x=splits.x_test, meta=report_meta(cfg),
                       latency=not no_latency)
    print_table(rep)
    click.echo(f"report: {run_dir / 'report.html'}")


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--dataset", type=click.Choice(DATASETS), default="cifar10", show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, envvar="NIN_DATA_DIR")
@click.option("--limit-test", type=int, default=None, callback=_positive, help="Stratified test subset.")
@click.option("--threads", type=int, default=None, callback=_positive, help="TFLite threads (default: all cores).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures to this JSON file.")
@_user_errors
def evaluate(model: Path, dataset: str, data_dir: Path | None, limit_test: int | None, threads: int | None,
             json_out: Path | None) -> None:
    """Test-split accuracy of any classification MODEL (.tflite, .keras or .h5) on a dataset."""
    from .evaluate import evaluate_model

    res = evaluate_model(model, dataset, data_dir, limit_test=limit_test, threads=threads)
    top5 = f", top-5 {100 * res['top5']:.2f}%" if res["top5"] is not None else ""
    click.echo(f"{model.name} on {dataset} test ({res['images']:,} images): top-1 {100 * res['top1']:.2f}%{top5} "
               f"({res['seconds']:.1f} s, {res['images_per_second']:.0f} images/s)")
    if json_out:
        from edge_app.fsutil import atomic_write_text

        atomic_write_text(json_out, json.dumps(res, indent=2) + "\n")


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the table here.")
@_user_errors
def compare(runs: tuple[Path, ...], markdown: Path | None) -> None:
    """Put several run folders side by side (e.g. to pick a width for a device)."""
    from rich.console import Console
    from rich.table import Table

    from .report import COMPARE_HEADER, compare_rows, read_report

    reports = [(str(r), read_report(r)) for r in runs]
    rows = compare_rows(reports)
    t = Table()
    for i, h in enumerate(COMPARE_HEADER):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    Console().print(t)
    if markdown:
        from edge_app.fsutil import atomic_write_text

        lines = ["| " + " | ".join(COMPARE_HEADER) + " |", "|" + "---|" * len(COMPARE_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        atomic_write_text(markdown, "\n".join(lines) + "\n")


@cli.command()
@click.option("--arch", type=click.Choice(list(ARCHS)), default="nin-cifar", show_default=True)
@click.option("--input-size", type=int, default=None, callback=_positive, help="Default: the arch's own (32 or 224).")
@click.option("--channels", type=click.IntRange(1, 4), default=3, show_default=True)
@click.option("--classes", type=click.IntRange(2, 100_000), default=10, show_default=True)
@click.option("--width", type=float, default=1.0, show_default=True, callback=_positive)
@_user_errors
def describe(arch: str, input_size: int | None, channels: int, classes: int, width: float) -> None:
    """Print each layer's output shape and parameter count."""
    from .models import ModelConfig, build_model, count_macs, describe as rows_of

    size = input_size or ARCHS[arch].default_input_size
    try:
        model = build_model(ModelConfig(arch=arch, num_classes=classes, input_shape=(size, size, channels), width=width))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--input-size") from None
    rows = rows_of(model)
    click.echo(f"{model.name}: input {size}x{size}x{channels}, {classes} classes")
    click.echo(f"{'layer':<22}{'type':<24}{'output shape':<20}{'params':>10}")
    click.echo("-" * 76)
    for r in rows:
        click.echo(f"{r['name']:<22}{r['type']:<24}{str(r['output_shape']):<20}{r['params']:>10,}")
    click.echo("-" * 76)
    click.echo(f"total parameters: {model.count_params():,}   MACs per image: {count_macs(model):,}")


if __name__ == "__main__":
    main()


@cli.group()
def edgetpu() -> None:
    """Coral Edge TPU: check any .tflite against its rules; compile with edgetpu_compiler."""


def _tflite_arg(model: Path) -> tuple[Path, Path | None]:
    """A .tflite, or a run folder meaning its model_int8.tflite (the run then records the result)."""
    from edge_app.loop import resolve_model_path

    return resolve_model_path(model), (model if model.is_dir() else None)


@edgetpu.command(name="check")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the verdicts as JSON.")
@click.option("--strict", is_flag=True, help="Exit 1 unless every operation would run on the Edge TPU.")
@_user_errors
def edgetpu_check(model: Path, json_out: Path | None, strict: bool) -> None:
    """Say, op by op, what of MODEL (a .tflite or a run folder) would run on the Edge TPU. No compiler needed."""
    from edge_app.fsutil import atomic_write_text

    from .edgetpu import check_model, format_check, record_in_run

    path, run_dir = _tflite_arg(model)
    result = check_model(path)
    for line in format_check(result):
        click.echo(line)
    if json_out:
        atomic_write_text(json_out, json.dumps(result.to_dict(), indent=2) + "\n")
    if run_dir is not None:
        record_in_run(run_dir, "check", result.to_dict())
    if strict and not result.fully_mapped:
        raise click.ClickException(f"{result.on_tpu} of {len(result.ops)} operations would run on the Edge TPU (--strict)")


@edgetpu.command(name="compile")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where <name>_edgetpu.tflite goes (default: beside the model).")
@click.option("--compiler", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Path of edgetpu_compiler (default: found on PATH).")
@click.option("--timeout", type=click.FloatRange(1, 36000), default=600, show_default=True, help="Seconds.")
@_user_errors
def edgetpu_compile(model: Path, out_dir: Path | None, compiler: Path | None, timeout: float) -> None:
    """Compile MODEL (a .tflite or a run folder's model_int8.tflite) with edgetpu_compiler (x86-64 Linux only)."""
    from .build import record_compiled
    from .edgetpu import compile_model

    path, run_dir = _tflite_arg(model)
    result = compile_model(path, out_dir, compiler=str(compiler) if compiler else None, timeout=timeout)
    if run_dir is not None:
        record_compiled(run_dir, result)
    click.echo(f"edgetpu_compiler {result.compiler_version}: {result.ops_on_tpu} of {result.ops_total} operations mapped "
               f"to the Edge TPU ({result.subgraphs} subgraph(s)) in {result.seconds:.1f} s -> {result.output}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("dist"), show_default=True,
              help="Folder for the .tar.gz.")
@click.option("--wheel", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Use this nin_pipeline wheel instead of building one from the source tree.")
@_user_errors
def package(run_dir: Path, out_dir: Path, wheel: Path | None) -> None:
    """Bundle RUN_DIR's int8 model for a device: wheel, model, launcher, systemd unit, README (.tar.gz)."""
    from .package import package_run

    archive = package_run(run_dir, out_dir, wheel=wheel)
    click.echo(f"bundle: {archive} ({archive.stat().st_size:,} bytes). On the device: tar xzf {archive.name} && "
               f"cd {archive.name[:-7]} && ./install.sh && ./run.sh --max-frames 10")
