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
@click.option("--json", "json_out", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None, help="Also write check-input.json here.")
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
    json_out: Path | None,
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
    outputs = [("--out", f) for f in dict.fromkeys([out / "check-input.json", *pictures])] + [("--json", json_out)]
    check_outputs(outputs, [*inputs, *source_inputs(source)], runs)
    loaded = open_model(model, runtime=runtime, ignore_checksum=ignore_checksum)
    with contextlib.closing(open_source(source, width=width, height=height)) as src:
        r = check_source(loaded, src, frames=frames, resize=resize, out_dir=out)
    if not r["frames"]:
        raise click.ClickException(
            f"no frame came from {source}" + (f" ({r['skipped']} unreadable)" if r["skipped"] else "") + "; check the source"
        )
    for line in table(r):
        click.echo(line)
    text = json.dumps({"model": str(loaded.path), "source": source, **r}, indent=2) + "\n"
    for dest in (out / "check-input.json", json_out):
        if dest is not None:
            write_text(dest, text)
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


def _device_url(ctx, param, value):
    from edge_app.agent.client import parse_url
    from edge_app.errors import AgentError

    if value is not None:
        try:
            parse_url(value)  # a wrong address is a usage error, before any model is read
        except AgentError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def device_options(command):
    """``--device URL`` and ``--device-token``: ask that device's `edge-app agent` (edge_app.agent.client) instead
    of this machine. One definition for every command that takes them (check-target here; nin-pipeline's sweep,
    compare and evaluate)."""
    command = click.option("--device-token", default=None, metavar="TOKEN", help="The agent's token (default: env NIN_DEVICE_TOKEN).")(command)
    return click.option(
        "--device",
        "device_url",
        default=None,
        metavar="URL",
        callback=_device_url,
        help="Ask the device instead: its `edge-app agent` at HOST:PORT or http://HOST:PORT (plain HTTP; elsewhere, an SSH tunnel).",
    )(command)


def _check_on_device(model: Path, runtimes: tuple[str, ...], pythons, json_out: Path | None, url: str, token: str | None, run: Path | None):
    """`check-target --device URL`: the device's own answer (its runtimes, through its agent), kept as the run's
    device_target.json; target.json and the report stay this machine's."""
    import json

    from click.core import ParameterSource

    from edge_app.agent.client import AgentClient
    from edge_app.checks.targets import format_check
    from edge_app.contract.files import DEVICE_TARGET_JSON
    from edge_app.errors import AgentError

    given = click.get_current_context().get_parameter_source("runtimes") == ParameterSource.COMMANDLINE
    if pythons or (given and len(runtimes) != 1):
        raise click.UsageError("with --device the device checks its own runtimes: give at most one --runtime, and no --python")
    client = AgentClient(url, token)
    reply = client.run("check-target", model, {"runtime": runtimes[0]} if given else {})
    r, d = reply.result, reply.device
    try:
        tpu = [f"Edge TPU (Coral's rules, no compiler): {r['edgetpu']['verdict']}"] if "edgetpu" in r else []
        lines = [*format_check(r), *tpu]
        loads = [t["loads"] for t in r["targets"]]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise AgentError("bad reply", f"the check-target result of {client.url} is not `edge-app check-target --json`'s ({exc!r})") from None
    click.echo("\n".join([f"on {d.hostname} ({d.board or d.machine}, {client.url}):", *lines]))
    out = json.dumps({**r, "agent": {"url": client.url, "device": d.to_json()}}, indent=2) + "\n"
    for path in (json_out, run / DEVICE_TARGET_JSON if run is not None else None):
        if path is not None:
            write_text(path, out)
    if any(v is False for v in loads):
        raise SystemExit(3)


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
@device_options
@model_anywhere
def check_target_cmd(
    model: Path, runtimes: tuple[str, ...], pythons: tuple[str, ...], json_out: Path | None, device_url: str | None, device_token: str | None
) -> None:
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
    if device_url is not None:
        _check_on_device(model, runtimes, pythons, json_out, device_url, device_token, run if a_run else None)
        return
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
