"""`edge-app check-input` and `edge-app check-target`: will the model work here, before it runs.

`check-target` is one command object: `nin-pipeline check-target` is this very command, registered on
the training side's group, which adds the run's report to what a run folder records (:func:`record_targets_with`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from pathlib import Path

import click

from edge_app.cli.common import RUNTIME_CHOICES, check_outputs, model_anywhere, model_inputs, source_inputs, write_text
from edge_app.cli.params import NonEmptyPath
from edge_app.frames.geometry import RESIZE_MODES
from edge_app.runtime import RUNTIME_NAMES


@click.command(name="check-input")
@click.option("--model", default=None, type=NonEmptyPath(path_type=Path), help="A run folder or a .tflite file (or give it as MODEL).")
@click.option("--source", default="0", show_default=True, help="The real source, as for `run`: a camera, picamera, a video, images.")
@click.option("--frames", type=click.IntRange(1, 1000), default=8, show_default=True, help="How many frames to judge.")
@click.option("--resize", type=click.Choice(RESIZE_MODES), default="crop", show_default=True)
@click.option("--width", type=click.IntRange(1, 10000), default=None, help="Camera capture width.")
@click.option("--height", type=click.IntRange(1, 10000), default=None, help="Camera capture height.")
@click.option(
    "--out",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    default=None,
    help="Where the pictures and check-input.json go (default: check-input/ in the run folder, else here).",
)
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="auto", show_default=True)
@click.option("--ignore-checksum", is_flag=True, help="Check a model whose sha256 differs from its model.json (warns).")
@model_anywhere
def check_input_cmd(
    model: Path,
    source: str,
    frames: int,
    resize: str,
    width: int | None,
    height: int | None,
    out: Path | None,
    runtime: str,
    ignore_checksum: bool,
) -> None:
    """Is the camera frame what the model expects? Saves the model's input as pictures and compares the
    frames with the training images (channel order, scale, exposure). Exit status 3: a problem found."""
    import json

    from edge_app.checks.inputcheck import check_source, table
    from edge_app.frames.sources import open_source
    from edge_app.model import open_model

    out = out or (Path(model) / "check-input" if Path(model).is_dir() else Path("check-input"))
    # what check_source writes, and the pictures of an earlier check it deletes first
    pictures = [out / f"{kind}_{i}.{ext}" for i in range(frames) for kind, ext in (("frame", "jpg"), ("input", "png"))]
    pictures += [*out.glob("frame_*.jpg"), *out.glob("input_*.png")] if out.is_dir() else []
    inputs, runs = model_inputs(model)
    check_outputs([("--out", f) for f in dict.fromkeys([out / "check-input.json", *pictures])], [*inputs, *source_inputs(source)], runs)
    loaded = open_model(model, runtime=runtime, ignore_checksum=ignore_checksum)
    with contextlib.closing(open_source(source, width=width, height=height)) as src:
        r = check_source(loaded, src, frames=frames, resize=resize, out_dir=out)
    if not r["frames"]:
        raise click.ClickException(
            f"no frame came from {source}" + (f" ({r['skipped']} unreadable)" if r["skipped"] else "") + "; check the source"
        )
    for line in table(r):
        click.echo(line)
    write_text(out / "check-input.json", json.dumps({"model": str(loaded.path), "source": source, **r}, indent=2) + "\n")
    click.echo(f"the model's input as pictures: {out}/input_*.png (beside each frame_*.jpg)")
    if r["findings"]:
        raise SystemExit(3)


EDGETPU = "edgetpu"  # --runtime edgetpu: the Edge TPU's verdict op by op (its one-line verdict comes always)
_RECORDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a group -> what else records a run folder's result


def record_targets_with(group: click.Group, record: Callable[[Path, dict], None]) -> None:
    """Where `check-target` runs as a command of ``group``, a run folder's result is also handed to
    ``record(run_folder, result)`` once target.json is written (the training side: into the run's report)."""
    _RECORDERS[group] = record


def target_names(ctx, param, values):
    from edge_app.checks.targets import runtime_spec, table_runtimes

    known = table_runtimes()
    values = tuple(runtime_spec(v) for v in values)  # as pip writes it: tflite-runtime==2.14 is the table's 2.14.0
    for v in values:
        if v not in known and v not in (*RUNTIME_NAMES, EDGETPU):
            raise click.BadParameter(
                f"{v!r} is neither a runtime with an op table ({', '.join(known)}) nor one to load "
                f"here by name ({', '.join(RUNTIME_NAMES)}), nor {EDGETPU}"
            )
    return tuple(values) or tuple(known)


@click.command(name="check-target")
@click.option("--model", default=None, type=NonEmptyPath(path_type=Path), help="A run folder or a .tflite file (or give it as MODEL).")
@click.option(
    "--runtime",
    "runtimes",
    multiple=True,
    callback=target_names,
    metavar="NAME",
    help="A target runtime, e.g. tflite-runtime==2.14.0 (repeatable; default: every one with an op table). "
    "ai-edge-litert and tflite-runtime are loaded wherever installed; TensorFlow's only when named; "
    "edgetpu: the Edge TPU's verdict op by op.",
)
@click.option(
    "--python",
    "pythons",
    multiple=True,
    type=NonEmptyPath(exists=True, dir_okay=False),
    metavar="PY",
    help="Also load the model in the runtimes another Python has (e.g. a venv with tflite-runtime 2.14).",
)
@click.option("--json", "json_out", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None)
@model_anywhere
def check_target_cmd(model: Path, runtimes: tuple[str, ...], pythons: tuple[str, ...], json_out: Path | None) -> None:
    """Will MODEL (a run folder or a .tflite) load on the target runtimes? Every op with its builtin code and
    version, and for each runtime whether it loads (loaded where it is installed; from the release's op table
    where not); and the Edge TPU's mapping (Coral's rules, no compiler). A run folder records it (target.json;
    from nin-pipeline, the report too). Exit status 3: a target will not load it."""
    import json

    from edge_app.checks.edgetpu import op_table, with_edgetpu
    from edge_app.checks.targets import check_target, format_check
    from edge_app.contract.files import DEMO_DIR, TARGET_JSON, resolve_model_path

    path = resolve_model_path(model)
    run = Path(model)
    a_run = run.is_dir() and run.resolve() != DEMO_DIR.resolve()  # the bundled demo is the package's, not a run's
    inputs, runs = model_inputs(model)
    outputs = {"--json": json_out, f"the run's own {TARGET_JSON}": run / TARGET_JSON if a_run else None}
    check_outputs(outputs, [*inputs, *(("--python", Path(p)) for p in pythons)], runs, writes=(TARGET_JSON,))
    r = check_target(path, tuple(n for n in runtimes if n != EDGETPU), pythons)
    tpu = with_edgetpu(r, path)
    lines = format_check(r)
    if EDGETPU in runtimes and tpu is not None:
        lines += ["", "Edge TPU, op by op:", *op_table(tpu)]
    click.echo("\n".join([*lines, f"Edge TPU (Coral's rules, no compiler): {r['edgetpu']['verdict']}"]))
    if json_out:
        write_text(json_out, json.dumps(r, indent=2) + "\n")
    if a_run:
        write_text(run / TARGET_JSON, json.dumps(r, indent=2) + "\n")
        record = _RECORDERS.get(click.get_current_context().find_root().command)
        if record is not None:
            record(run, r)
    if any(t["loads"] is False for t in r["targets"]):
        raise SystemExit(3)
