"""`nin-pipeline`: thin click commands. Each validates its options with click types and calls one
plain function (mostly in ``pipeline.stages.orchestrator``); user errors are turned into one line in one place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from click.core import ParameterSource

from edge_app.cli.common import ErrorGroup, check_outputs, command_group, write_text
from edge_app.cli.params import NonEmptyPath
from edge_app.contract.files import REPORT_HTML, RunFiles
from edge_app.quiet import is_verbose

from pipeline import __version__
from pipeline.cli.choose import device_evaluate
from pipeline.cli.params import FOLLOW_LINKS, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, RUN_DIR, SEED, WORKERS, FiniteFloat
from pipeline.data.formats import DATASETS
from pipeline.data.splits import DATA_CACHES
from pipeline.export.convert import IO_TYPES, TARGETS
from pipeline.models.nin import ARCHS, HEADS, POOLS
from pipeline.runs.folder import STAGES
from pipeline.runs.profiles import PROFILES

TRAINING_STACK = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "PIL", "tqdm", "matplotlib", "rich")
# the options of `build` that are BuildRequest fields (besides the profile overrides and the data place)
_REQUEST_FLAGS = ("dataset", "profile", "arch", "val_fraction", "io_type", "target", "class_maps", "seed")


def tf_env() -> None:
    """Set before TensorFlow is first imported: tfmot needs Keras 2 (tf_keras); and oneDNN's CPU
    kernels, which TensorFlow turns on by itself only on CPUs with AVX512_VNNI/BF16 or AMX: on AVX2 they
    about double the training step, with the same bits (docs/benchmarks/training-speed.md).
    TF_ENABLE_ONEDNN_OPTS=0 in the environment keeps them off. The benchmarks
    call it too, so that they measure what the command runs."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _legacy_keras_env() -> None:
    """``tf_env``, and TensorFlow's own log lines hidden unless --verbose."""
    tf_env()
    if not is_verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _Cli(ErrorGroup):
    """edge-app's error handler (one line, no traceback), plus what only training meets: Ctrl-C's resume
    hint, and the training stack not installed. TensorFlow's own runtime errors come here already as
    ``TrainingError`` (pipeline.stages.orchestrator.stage_errors)."""

    os_error_hint = "; choose a writable place (--out, --json, --markdown)"

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            from edge_app.errors import Terminated

            by = f"stopped by {exc.signal_name}" if isinstance(exc, Terminated) else "interrupted"
            # the command that was stopped says how to finish its work (pipeline.stages.orchestrator); else by the command's name
            hint = getattr(exc, "resume_hint", None) or (
                "finished epochs are checkpointed; run the same command again (or `nin-pipeline build --resume --out RUN`) to continue"
                if ctx.invoked_subcommand == "build"
                else "run the same command again"
            )
            click.echo(f"\n{by}: {hint}.", err=True)
            raise click.exceptions.Exit(exc.exit_code if isinstance(exc, Terminated) else 130) from None
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in TRAINING_STACK:
                raise click.ClickException(
                    f"the training stack is not installed ({exc.name} is missing): pip install 'nin-pipeline[train]' "
                    "(from a clone: pip install -e ./edge -e '.[train]')"
                ) from None
            raise


@command_group(_Cli)
@click.version_option(__version__, prog_name="nin-pipeline")
def cli() -> None:
    """Train Network-in-Network, fine-tune it with QAT, and export a fully int8 TFLite model."""
    _legacy_keras_env()


def main(argv: list[str] | None = None) -> None:
    from edge_app.errors import stop_on_sigterm
    from edge_app.quiet import entry_point

    entry_point(argv)
    _legacy_keras_env()
    stop_on_sigterm()
    cli.main(args=argv, prog_name="nin-pipeline")


@cli.command()
@click.option("--dataset", type=click.Choice(DATASETS), default="cifar10", show_default=True)
@click.option(
    "--data-dir",
    type=NonEmptyPath(path_type=Path),
    default=None,
    envvar="NIN_DATA_DIR",
    help="Folder or archive with the data (env NIN_DATA_DIR); else the Keras cache or download.",
)
@FOLLOW_LINKS
@click.option("--out", type=RUN_DIR, default=None, help="Run folder (default artifacts/<dataset>-<arch>-<timestamp>). Re-running on it resumes.")
@click.option(
    "--profile",
    type=click.Choice(list(PROFILES)),
    default="quick",
    show_default=True,
    help="quick: small width, CPU-friendly. paper: the paper's recipe, for a GPU.",
)
@click.option("--arch", type=click.Choice(list(ARCHS)), default="nin-cifar", show_default=True)
@click.option("--width", type=POSITIVE_FLOAT, default=None, help="Channel width multiplier.")
@click.option(
    "--input-size", type=POSITIVE_INT, default=None, help="Resize images to N x N (image folders, nin-imagenet). Default: the data's own size."
)
@click.option("--epochs", type=POSITIVE_INT, default=None, help="Float training epochs.")
@click.option("--time-budget", type=POSITIVE_FLOAT, default=None, metavar="MINUTES", help="Plan the epochs so the build ends in time.")
@click.option("--qat-epochs", type=NON_NEGATIVE_INT, default=None, help="QAT fine-tuning epochs.")
@click.option("--batch-size", type=POSITIVE_INT, default=None)
@click.option("--lr", type=POSITIVE_FLOAT, default=None, help="Peak learning rate.")
@click.option("--dropout", type=FiniteFloat(0, 0.95), default=None)
@click.option("--label-smoothing", type=FiniteFloat(0, 0.5), default=None, help="Label smoothing of the float training loss (e.g. 0.1).")
@click.option("--ema", type=FiniteFloat(0, 0.9999), default=None, metavar="M", help="End with the moving average of the weights (e.g. 0.999).")
@click.option("--qat-lr", type=POSITIVE_FLOAT, default=None, help="Peak learning rate of QAT fine-tuning.")
@click.option(
    "--qat-distill",
    type=FiniteFloat(0, 1),
    default=None,
    metavar="W",
    help="QAT learns W x the float model's answers + (1 - W) x the labels (keeps int8 closer to float; 0: labels only).",
)
@click.option("--limit-train", type=POSITIVE_INT, default=None, help="Stratified train subset (smoke runs).")
@click.option("--limit-test", type=POSITIVE_INT, default=None, help="Stratified test subset.")
@click.option("--val-fraction", type=FiniteFloat(0, 0.5), default=0.1, show_default=True, help="Share of train held out for validation.")
@click.option(
    "--io-type",
    type=click.Choice(IO_TYPES),
    default=None,
    help="int8 model input/output type: int8 (default), or uint8 for runtimes that want it.",
)
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="cpu",
    show_default=True,
    help="edgetpu: uint8 input/output, checked against the Edge TPU's rules, compiled if edgetpu_compiler is installed.",
)
@click.option(
    "--class-maps/--no-class-maps",
    default=None,
    help="Export the per-class confidence maps as a second model output (edge-app --heatmap uses them). "
    "Default: where the architecture has them (NiN with its GAP head).",
)
@click.option(
    "--head",
    type=click.Choice(HEADS),
    default=None,
    help="nin-cifar's classifier: gap (the paper's, default), fc or fc-dropout (its ablation, section 4.6).",
)
@click.option("--pool2", type=click.Choice(POOLS), default=None, help="nin-cifar's second pooling: avg (the paper's), max or depthwise.")
@click.option(
    "--data-cache",
    type=click.Choice(DATA_CACHES),
    default=None,
    help="Where decoded images live: memory, disk (a decoded cache, read in chunks), none (decode every epoch); "
    "auto (default): memory if they fit --memory-budget, else disk.",
)
@click.option(
    "--memory-budget",
    "memory_budget_gb",
    type=POSITIVE_FLOAT,
    default=None,
    metavar="GB",
    help="Decoded images auto keeps in memory (default: a quarter of this machine's RAM).",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--deterministic/--no-deterministic",
    default=None,
    help="Same --seed, same machine -> the same report figures and byte-identical .tflite files "
    "(default: on; see docs/training.md for what it costs).",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run (--out, or the newest matching one in artifacts/).")
@click.option(
    "--workers",
    type=WORKERS,
    default=None,
    metavar="HOST:PORT,HOST:PORT[,...]",
    help="Train on several machines: run the same command on each, with its own --worker-index "
    "(0, the chief, writes --out). Sets TF_CONFIG, which a cluster manager may set instead.",
)
@click.option("--worker-index", type=NON_NEGATIVE_INT, default=None, help="This machine's place in --workers (0 is the chief).")
@click.option(
    "--worker-timeout",
    type=FiniteFloat(10, 86400),
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="How long a worker waits for the others to start before it stops.",
)
@click.option(
    "--collective-timeout",
    type=FiniteFloat(0, 86400),
    default=0,
    show_default=True,
    metavar="SECONDS",
    help="Stop when a step's all-reduce waits this long for a worker that is alive but stuck (0: no limit; "
    "a dead or frozen worker is noticed anyway, in seconds). For debugging hangs: TensorFlow keeps a "
    "thread per all-reduce for this long.",
)
def build(
    dataset,
    data_dir,
    out,
    profile,
    arch,
    width,
    input_size,
    epochs,
    time_budget,
    qat_epochs,
    batch_size,
    lr,
    dropout,
    label_smoothing,
    ema,
    qat_lr,
    qat_distill,
    limit_train,
    limit_test,
    val_fraction,
    io_type,
    target,
    class_maps,
    head,
    pool2,
    data_cache,
    memory_budget_gb,
    seed,
    deterministic,
    resume,
    workers,
    worker_index,
    worker_timeout,
    collective_timeout,
) -> None:
    """Train NiN, fine-tune it with QAT, convert to int8 TFLite and evaluate: one run folder.

    On several machines the batch size is global (each of N workers takes batch / N per step, the
    gradients are averaged), so the same --batch-size and --lr give the same training as on one."""
    from pipeline.runs.config import BuildRequest
    from pipeline.stages.cluster import from_env, tf_config
    from pipeline.stages.orchestrator import build as build_run
    from pipeline.stages.orchestrator import resolve_build

    if target == "edgetpu" and io_type == "int8":
        raise click.BadParameter("--target edgetpu takes uint8 input and output; leave out --io-type int8", param_hint="--io-type")
    if time_budget is not None and workers is not None:
        raise click.UsageError("--time-budget plans on one machine; with --workers give --epochs")
    if (workers is None) != (worker_index is None):
        raise click.UsageError(
            "--workers and --worker-index go together: the same --workers on every machine, each with its own --worker-index (0 is the chief)"
        )
    if workers is not None:
        os.environ["TF_CONFIG"] = tf_config(workers, worker_index)
    cluster = from_env()
    overrides = {
        k: v
        for k, v in dict(
            width=width,
            input_size=input_size,
            epochs=epochs,
            qat_epochs=qat_epochs,
            batch_size=batch_size,
            lr=lr,
            dropout=dropout,
            label_smoothing=label_smoothing,
            ema=ema,
            qat_lr=qat_lr,
            qat_distill=qat_distill,
            limit_train=limit_train,
            limit_test=limit_test,
            deterministic=deterministic,
            head=head,
            pool2=pool2,
        ).items()
        if v is not None
    }
    request = BuildRequest(
        dataset=dataset,
        data_dir=data_dir,
        profile=profile,
        arch=arch,
        overrides=overrides,
        val_fraction=val_fraction,
        io_type=io_type,
        target=target,
        class_maps=class_maps,
        seed=seed,
        data_cache=data_cache,
        memory_budget_gb=memory_budget_gb,
        time_budget_min=time_budget,
        # which of these the command line gave (a resume changes only those; the rest are the run's own)
        given=frozenset(k for k in _REQUEST_FLAGS if click.get_current_context().get_parameter_source(k) == ParameterSource.COMMANDLINE),
    )
    cfg, out = resolve_build(request, out, resume=resume, workers=cluster)
    run = build_run(cfg, out, workers=cluster, worker_timeout=worker_timeout, collective_timeout=collective_timeout)
    click.echo(
        f"run folder: {run.root}"
        if cluster is None or cluster.is_chief
        else f"{cluster.describe()}: done; the chief writes the run folder {run.root}"
    )
    if (cluster is None or cluster.is_chief) and run.path(REPORT_HTML).is_file():
        click.echo(
            f"report: {run.path(REPORT_HTML)}\n"
            f"next: edge-app run {run.root} --source 0     (on this machine's camera; --source FILE|FOLDER too)\n"
            f"      nin-pipeline package {run.root}     (a bundle to copy to the device)"
        )


STAGE_HELP = {
    "train": "Redo (or resume) float training in RUN_DIR, then QAT, conversion and evaluation.",
    "qat": "Redo quantisation-aware fine-tuning in RUN_DIR, then conversion and evaluation.",
    "convert": "Redo the TFLite conversion in RUN_DIR, then the evaluation.",
}


def _stage_command(name: str) -> None:
    params: list[click.Parameter] = [click.Argument(["run_dir"], type=RUN_DIR)]
    if name == "convert":
        params.append(
            click.Option(
                ["--target"],
                type=click.Choice(TARGETS),
                default=None,
                help="Convert for this target from now on (edgetpu: uint8 I/O, check, compile). Default: the run's own.",
            )
        )

    def callback(run_dir: Path, target: str | None = None) -> None:
        from pipeline.stages.orchestrator import redo_stage

        run = redo_stage(run_dir, name, target)
        click.echo(f"run folder: {run.root}")

    cli.add_command(click.Command(name, callback=callback, params=params, help=STAGE_HELP[name]))


for _name in STAGES[:3]:
    _stage_command(_name)


@cli.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--rerun", is_flag=True, help="Run every model on the test split again instead of reusing predictions.npz.")
@click.option("--no-latency", is_flag=True, help="Skip the latency measurement.")
def report(run_dir: Path, rerun: bool, no_latency: bool) -> None:
    """(Re)write report.json, report.md, report.html and the plots of RUN_DIR."""
    from pipeline.stages.orchestrator import rewrite_report

    click.echo(f"report: {rewrite_report(run_dir, rerun=rerun, latency=not no_latency)}")


@cli.command()
@click.argument("model", type=NonEmptyPath(path_type=Path))
@click.option("--dataset", type=click.Choice(DATASETS), default=None, help="Default: a run folder's own dataset, else cifar10.")
@click.option(
    "--data-dir", type=NonEmptyPath(path_type=Path), default=None, envvar="NIN_DATA_DIR", help="Default: a run folder's own data directory."
)
@FOLLOW_LINKS
@click.option("--limit-test", type=POSITIVE_INT, default=None, help="Stratified test subset (the same images as `build --limit-test`).")
@click.option("--threads", type=POSITIVE_INT, default=None, help="TFLite threads (default: the cores this process may use).")
@click.option("--ignore-checksum", is_flag=True, help="Run a .tflite whose sha256 model.json beside it does not record (warns).")
@click.option(
    "--json", "json_out", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None, help="Also write the figures to this JSON file."
)
@device_evaluate  # --device URL --device-eval ALIAS: on the device's own labelled folder instead
def evaluate(
    model: Path, dataset: str, data_dir: Path | None, limit_test: int | None, threads: int | None, ignore_checksum: bool, json_out: Path | None
) -> None:
    """Test-split accuracy of any classification MODEL (.tflite, .keras, .h5, or a run folder's int8 model) on a dataset."""
    from pipeline.report.predict import evaluate_model

    if model.is_dir() and RunFiles(model).config.is_file():  # a run folder: its own data unless told otherwise
        from pipeline.runs.folder import RunFolder

        cfg = RunFolder.open(model).load_config()
        dataset = dataset or cfg.data.dataset
        if data_dir is None and cfg.data.data_dir:
            data_dir = Path(cfg.data.data_dir)
    dataset = dataset or "cifar10"
    check_outputs({"--json": json_out}, [("MODEL", model), ("--data-dir", data_dir)], [model])

    res = evaluate_model(model, dataset, data_dir, limit_test=limit_test, threads=threads, ignore_checksum=ignore_checksum)
    top5 = f", top-5 {100 * res['top5']:.2f}%" if res["top5"] is not None else ""
    click.echo(
        f"{model.name} on {dataset} test ({res['images']:,} images): top-1 {100 * res['top1']:.2f}%{top5} "
        f"({res['seconds']:.1f} s, {res['images_per_second']:.0f} images/s)"
    )
    if json_out:
        write_text(json_out, json.dumps(res, indent=2) + "\n")


from pipeline.cli import choose, ship  # noqa: E402  (compare, describe, sweep; edgetpu, check-target, clients, package)

choose.register(cli)
ship.register(cli)

if __name__ == "__main__":
    main()
