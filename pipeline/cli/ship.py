"""The `nin-pipeline` commands that take a run to a device: `edgetpu check|compile`, `check-target`
(the very command `edge-app check-target` is, recording into the run's report), `clients` and
`package`; registered on the main group by :func:`register`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_app.cli.checks import check_target_cmd, record_targets_with
from edge_app.cli.common import check_outputs, write_text
from edge_app.cli.params import NonEmptyPath

from pipeline.cli.params import POSITIVE_INT, RUN_DIR, FiniteFloat


@click.group()
def edgetpu() -> None:
    """Coral Edge TPU: check any .tflite against its rules; compile with edgetpu_compiler."""


@edgetpu.command(name="check")
@click.argument("model", type=NonEmptyPath(path_type=Path))
@click.option("--json", "json_out", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None, help="Also write the verdicts as JSON.")
@click.option("--strict", is_flag=True, help="Exit 1 unless every operation would run on the Edge TPU.")
def edgetpu_check(model: Path, json_out: Path | None, strict: bool) -> None:
    """Say, op by op, what of MODEL (a .tflite or a run folder) would run on the Edge TPU. No compiler needed."""
    from edge_app.checks.edgetpu import format_check

    from pipeline.report.records import edgetpu_check as check

    check_outputs({"--json": json_out}, [("MODEL", model)], [model])
    result = check(model)
    click.echo("\n".join(format_check(result)))
    if json_out:
        write_text(json_out, json.dumps(result.to_dict(), indent=2) + "\n")
    if strict and not result.fully_mapped:
        raise click.ClickException(f"{result.on_tpu} of {len(result.ops)} operations would run on the Edge TPU (--strict)")


@edgetpu.command(name="compile")
@click.argument("model", type=NonEmptyPath(path_type=Path))
@click.option(
    "--out-dir",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    default=None,
    help="Where <name>_edgetpu.tflite goes (default: beside the model).",
)
@click.option(
    "--compiler", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None, help="Path of edgetpu_compiler (default: found on PATH)."
)
@click.option("--timeout", type=FiniteFloat(1, 36000), default=600, show_default=True, help="Seconds.")
def edgetpu_compile(model: Path, out_dir: Path | None, compiler: Path | None, timeout: float) -> None:
    """Compile MODEL (a .tflite or a run folder's model_int8.tflite) with edgetpu_compiler (x86-64 Linux only)."""
    from pipeline.report.records import edgetpu_compile as compile_

    result = compile_(model, out_dir, compiler=str(compiler) if compiler else None, timeout=timeout)
    click.echo(
        f"edgetpu_compiler {result.compiler_version}: {result.ops_on_tpu} of {result.ops_total} operations mapped "
        f"to the Edge TPU ({result.subgraphs} subgraph(s)) in {result.seconds:.1f} s -> {result.output}"
    )


def _record_target(run_dir: Path, result: dict) -> None:
    """`check-target RUN` (the device side's command, target.json written by it): the run's report shows it too."""
    from pipeline.report.records import record_target

    record_target(run_dir, result)


@click.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option(
    "--writer-python",
    type=NonEmptyPath(exists=True, dir_okay=False),
    default=None,
    envvar="NIN_METADATA_PYTHON",
    help="A Python with mediapipe 0.10.21 (its metadata writer and ImageClassifier; env NIN_METADATA_PYTHON).",
)
@click.option(
    "--check",
    "check_dir",
    type=NonEmptyPath(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Classify these images (a folder, searched recursively) with MediaPipe and with edge_app, and compare.",
)
@click.option(
    "--task-python",
    type=NonEmptyPath(exists=True, dir_okay=False),
    default=None,
    help="With --check: also classify with the TFLite Task Library in this Python (tflite-support 0.4.4).",
)
@click.option("--limit", type=POSITIVE_INT, default=50, show_default=True, help="At most this many check images.")
def clients(run_dir: Path, writer_python: str | None, check_dir: Path | None, task_python: str | None, limit: int) -> None:
    """The model for MediaPipe Tasks' ImageClassifier and the TFLite Task Library: scores only, uint8 I/O,
    TFLite Metadata (labels, normalisation) -> model_uint8_metadata.tflite and clients.json in RUN_DIR."""
    from pipeline.report.clients import build_clients_model

    images = sorted(p for p in check_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit] if check_dir else []
    if check_dir and not images:
        raise click.BadParameter(f"no .jpg or .png images in {check_dir}", param_hint="--check")
    if task_python and not check_dir:
        raise click.UsageError("--task-python goes with --check DIR")
    r = build_clients_model(run_dir, writer_python, images, task_python)
    click.echo(f"{run_dir / r.file} ({r.bytes:,} bytes): uint8 input, scores only, metadata by {r.writer}")
    c = r.check
    if c:
        click.echo(
            f"same top-1 as edge_app on the same file, of {c.images} image(s): "
            + ", ".join(f"{a.client} {a.same_top1}" for a in c.clients)
            + (f"; edge_app on {c.reference}: {c.same_top1_as_reference}" if c.reference else "")
        )
        if not c.all_agree():
            raise SystemExit(3)


@click.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--out", "out_dir", type=RUN_DIR, default=Path("dist"), show_default=True, help="Folder for the .tar.gz.")
@click.option(
    "--wheel",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    default=None,
    help="Use this nin_edge wheel (the device side: pip wheel --no-deps ./edge) instead of building one from the source tree.",
)
def package(run_dir: Path, out_dir: Path, wheel: Path | None) -> None:
    """Bundle RUN_DIR's int8 model for a device: wheel, model, launcher, systemd unit, README (.tar.gz)."""
    from pipeline.export.bundle import package_run

    archive = package_run(run_dir, out_dir, wheel=wheel)
    click.echo(
        f"bundle: {archive} ({archive.stat().st_size:,} bytes). On the device: tar xzf {archive.name} && "
        f"cd {archive.name[:-7]} && ./install.sh && ./run.sh --max-frames 10"
    )


def register(cli: click.Group) -> None:
    for command in (edgetpu, clients, package):
        cli.add_command(command)
    cli.add_command(check_target_cmd, name="check-target")  # the very command `edge-app check-target` is (edge_app.cli.checks)
    record_targets_with(cli, _record_target)
