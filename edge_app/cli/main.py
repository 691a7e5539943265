"""`edge-app`: the device-side command: `run` (the camera loop), `bench`, `eval`, `info`,
`check-input` and `check-target` (in edge_app.cli.checks), `agent` (in edge_app.cli.agent).

Each command validates its options with click types and calls the library; every error a user
can fix (an :class:`~edge_app.errors.EdgeAppError`, or an OSError) is turned into one
``Error: ...`` line and exit status 1 in one place, :class:`_Cli`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import click

from edge_app import __version__
from edge_app.camera.loop import LoopOptions
from edge_app.cli.agent import agent_cmd
from edge_app.cli.checks import check_input_cmd, check_target_cmd
from edge_app.cli.common import (
    MODEL_FIELDS,
    ErrorGroup,
    ModelChoice,
    bundle,
    check_outputs,
    command_group,
    model_anywhere,
    model_inputs,
    one_line,
    open_text,
    runtime_options,
    source_inputs,
    write_text,
)
from edge_app.cli.params import TOKEN, FiniteFloat, NonEmptyPath
from edge_app.contract.files import EVAL_JSON
from edge_app.errors import OutputError, stop_on_sigterm
from edge_app.frames.geometry import RESIZE_MODES
from edge_app.quiet import is_verbose

LOOP_FIELDS = tuple(f.name for f in dataclasses.fields(LoopOptions))


@command_group(ErrorGroup)
@click.version_option(__version__, prog_name="edge-app")
def cli() -> None:
    """Run nin-pipeline's int8 models on a device (no TensorFlow needed)."""
    import os

    if not is_verbose():
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # our own messages say what failed


def _preview_server(address: str, token: str | None = None, insecure: bool = False):
    from edge_app.camera.serve import PreviewServer, access_token, parse_address  # nothing of the preview is imported unless it is on

    host, _ = parse_address(address)
    return PreviewServer(address, access_token(host, token, insecure))


def _summary_line(d: dict) -> str:
    stages = ", ".join(f"{k} {v['median']:.2f}/{v['p95']:.2f}" for k, v in d["ms"].items())
    lat = d.get("capture_to_result_ms") or {}
    return (
        f"summary: {d['frames']} frames in {d['seconds']:.1f} s ({d['fps']:.1f} FPS), stopped by {d['stopped_by']}; "
        f"ms median/p95: {stages or '-'}"
        + (f"; capture-to-result ms median/p95: {lat['median']:.2f}/{lat['p95']:.2f}" if lat else "")
        + (f"; skipped {d['skipped']} unreadable" if d["skipped"] else "")
        + (f"; input check found: {', '.join(d['input_check'])}" if d.get("input_check") else "")
    )


def _bench_text(r: dict) -> str:
    inv, loop = r["invoke_ms"], r["loop"]
    stages = ", ".join(f"{k} {v['median']:.3f}" for k, v in loop["ms"].items())
    return (
        f"  invoke only : median {inv['median']:.3f} ms, p95 {inv['p95']:.3f} ms, {inv['fps']:.1f} FPS\n"
        f"  whole loop  : {loop['fps']:.1f} FPS on {r['frame']} frames (median ms: {stages})\n"
        f"  loop / invoke FPS: {r['loop_over_invoke_fps']:.2f} with prefetch, "
        f"{r['loop_no_prefetch_over_invoke_fps']:.2f} without ({r['loop_no_prefetch']['fps']:.1f} FPS)"
    )


@cli.command()
@click.option("--model", default=None, type=NonEmptyPath(path_type=Path), help="A run folder or a .tflite file (or give it as MODEL).")
@runtime_options()
@click.option("--json", "json_out", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None, help="Also write it as JSON.")
@model_anywhere
@bundle("model", ModelChoice, MODEL_FIELDS)
def info(model: ModelChoice, json_out: Path | None) -> None:
    """Load MODEL (a run folder or a .tflite) and print its inputs, outputs, sidecar, and which ops the
    delegate (--delegate; XNNPACK on the CPU) took and which stayed on TFLite's built-in CPU kernels."""
    import json

    from edge_app.checks.placement import compiled_placement, describe, placement
    from edge_app.contract.files import resolve_model_path
    from edge_app.model import describe_model, model_io

    check_outputs({"--json": json_out}, *model_inputs(model.model, model.delegate, model.labels))
    path = resolve_model_path(model.model, model.delegate)
    compiled, lines, d = compiled_placement(path), [], {"model": str(path), "runtime": None, "delegate": model.delegate}
    if compiled is None or model.delegate == "edgetpu":
        loaded = model.open()
        lines, d = describe_model(loaded.path, loaded=loaded), model_io(loaded)
    placed = compiled if compiled is not None else placement(loaded.classifier.interpreter, loaded.delegate, model=loaded.path)
    lines = [*lines, describe(placed, "edgetpu" if compiled is not None else loaded.delegate)]  # compiled: read from the file
    click.echo("\n".join(lines))
    if json_out:
        write_text(json_out, json.dumps({**d, "lines": lines, "placement": placed}, indent=2) + "\n")


@cli.command()
@click.option(
    "--model", default=None, type=NonEmptyPath(path_type=Path), help="A run folder (model_int8.tflite + model.json) or a .tflite file."
)
@click.option(
    "--source",
    default="0",
    show_default=True,
    help="Camera index, /dev/videoN, picamera, a video file, an RTSP/HTTP URL, an image, a folder or a glob.",
)
@runtime_options(fallback=True)
@click.option(
    "--labels",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    default=None,
    help="Class names, one per line (default: model.json's, or a labels.txt beside a bare .tflite).",
)
@click.option("--width", type=click.IntRange(1, 10000), default=None, help="Camera capture width.")
@click.option("--height", type=click.IntRange(1, 10000), default=None, help="Camera capture height.")
@click.option("--fps", type=FiniteFloat(0, 1000, min_open=True), default=None, help="Camera frame rate.")
@click.option(
    "--resize", type=click.Choice(RESIZE_MODES), default="crop", show_default=True, help="How a frame becomes the model's square input."
)
@click.option("--top-k", "top", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--threshold", type=FiniteFloat(0, 1), default=0.0, show_default=True)
@click.option("--max-frames", type=click.IntRange(1, None), default=None)
@click.option("--loop", is_flag=True, help="Replay a video file, image, folder or glob source from the start when it ends.")
@click.option("--output", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None, help="Write the JSON lines here instead of stdout.")
@click.option(
    "--summary",
    "summary_path",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the end-of-run summary as JSON.",
)
@click.option(
    "--save-video", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None, help="Write the annotated frames to this .avi or .mp4."
)
@click.option("--display", is_flag=True, help="Show annotated frames in a window (q or Esc quits). Default: headless.")
@click.option(
    "--serve",
    "serve_at",
    default=None,
    metavar="[HOST:]PORT",
    help="Serve a live preview page (MJPEG stream, top-k, FPS, /status JSON); binds 127.0.0.1 unless HOST is given.",
)
@click.option(
    "--serve-token",
    type=TOKEN,
    default=None,
    envvar="EDGE_APP_SERVE_TOKEN",
    metavar="TEXT",
    help="Token the preview wants (env EDGE_APP_SERVE_TOKEN). Off loopback one is made up and printed if not given.",
)
@click.option(
    "--serve-insecure", is_flag=True, help="Serve the preview on a non-loopback address without a token (anyone on the network sees the camera)."
)
@click.option(
    "--max-fps",
    type=FiniteFloat(0, 1000, min_open=True),
    default=None,
    help="Cap the frame rate (play a video file at its speed, or spare a device's CPU).",
)
@click.option(
    "--prefetch/--no-prefetch",
    default=True,
    show_default=True,
    help="Capture and pre-process the next frame in a second thread while this one is invoked.",
)
@click.option(
    "--heatmap", is_flag=True, help="Overlay the top class's confidence map (NiN's last block) on drawn frames; add its peak to the JSON."
)
@model_anywhere
@bundle("model", ModelChoice, MODEL_FIELDS)
@bundle("options", LoopOptions, LOOP_FIELDS)
def run(
    model: ModelChoice,
    options: LoopOptions,
    source: str,
    width: int | None,
    height: int | None,
    fps: float | None,
    output: Path | None,
    summary_path: Path | None,
    save_video: Path | None,
    display: bool,
    serve_at: str | None,
    serve_token: str | None,
    serve_insecure: bool,
    loop: bool,
) -> None:
    """Classify frames from a camera, video, stream or images; one JSON line per frame (headless)."""
    import json
    import logging
    import sys

    from edge_app import health
    from edge_app.camera.draw import VideoSink, Window
    from edge_app.camera.loop import run_loop
    from edge_app.checks.placement import describe as describe_placement
    from edge_app.checks.placement import placement
    from edge_app.frames.sources import open_source
    from edge_app.fsutil import NamedStream
    from edge_app.model import require_class_maps

    inputs, runs = model_inputs(model.model, model.delegate, model.labels)
    check_outputs({"--output": output, "--summary": summary_path, "--save-video": save_video}, [*inputs, *source_inputs(source)], runs)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    loaded = model.open()
    if options.heatmap:
        require_class_maps(loaded)
    # everything opened is on the stack: a failure at any step (e.g. --display without a screen)
    # closes what was opened before it, the camera first among them
    with contextlib.ExitStack() as stack:

        def opened(thing):
            return stack.enter_context(contextlib.closing(thing))

        if serve_at is None and serve_insecure:
            raise click.UsageError("--serve-insecure goes with --serve HOST:PORT")
        server = opened(_preview_server(serve_at, serve_token, serve_insecure)) if serve_at is not None else None
        src = opened(open_source(source, width=width, height=height, fps=fps, loop=loop))
        window = opened(Window()) if display else None
        sink = opened(VideoSink(str(save_video), fps or 30.0)) if save_video else None
        clf = loaded.classifier
        click.echo(
            f"edge-app: {loaded.path} on {clf.runtime}, delegate {loaded.delegate}, input "
            f"{'x'.join(map(str, clf.input_size))} {clf.input.dtype.name}; source {source}",
            err=True,
        )
        placed = placement(clf.interpreter, loaded.delegate, model=loaded.path)
        click.echo(describe_placement(placed, loaded.delegate), err=True)
        if server is not None:
            click.echo(f"preview: {server.url}", err=True)
        out = stack.enter_context(open_text(output)) if output else NamedStream(sys.stdout)
        health_start = health.read()
        summary = run_loop(loaded, src, options, out=out, sink=sink, window=window, preview=server.preview if server else None)
    d = {**summary.to_dict(), "device_health": {"start": health_start, "end": health.read()}, "delegate_placement": placed}
    problems = [summary.error] if summary.error else []
    for line in (_summary_line(d), health.describe(health_start, d["device_health"]["end"])):
        with contextlib.suppress(OSError):  # a terminal gone with its ssh session must not cost the summary file
            click.echo(line, err=True)
    if summary_path:
        try:  # on another disk than a full --output, it is still written
            write_text(summary_path, json.dumps(d, indent=2) + "\n")
        except OutputError as exc:
            problems.append(str(exc))
    if problems:
        raise click.ClickException(one_line("; ".join(problems)))
    if summary.frames == 0 and summary.stopped_by == "end of source":
        why = f"its {summary.skipped} image(s) could not be read" if summary.skipped else "it gave no frames"
        raise click.ClickException(
            f"no frame was processed: {why} ({source}); check the source (a readable image, video or folder of images, or a working camera)"
        )


@cli.command(name="bench")
@click.option("--model", default=None, type=NonEmptyPath(path_type=Path), help="A run folder or a .tflite file (or give it as MODEL).")
@runtime_options()
@click.option("--runs", type=click.IntRange(10, 1_000_000), default=300, show_default=True)
@click.option("--json", "json_out", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--all",
    "all_models",
    is_flag=True,
    help="One table: every model in the run folder x runtimes installed x threads 1..cores x delegates that load.",
)
@click.option(
    "--data",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    default=None,
    help="With --all: also top-1 on this labelled folder (DIR/<class>/*.jpg).",
)
@click.option("--limit", type=click.IntRange(1, None), default=None, help="With --data: at most N images.")
@model_anywhere
@bundle("model", ModelChoice, MODEL_FIELDS)
def bench_cmd(model: ModelChoice, runs: int, json_out: Path | None, all_models: bool, data: Path | None, limit: int | None) -> None:
    """Invoke-only latency, and the whole loop on synthetic 640x480 frames, side by side (--all: a table
    over every model, runtime, thread count and delegate)."""
    import json

    from edge_app.measure.bench import bench, bench_all, bench_table

    if all_models:
        if not Path(model.model).is_dir():
            raise click.BadParameter("--all takes a run folder (its float32, QAT int8, PTQ int8 and Edge TPU models)", param_hint="MODEL")
        if data is not None and not data.is_dir():
            raise click.BadParameter(f"{data}: no such folder", param_hint="--data")
        if model.delegate != "cpu" or model.delegate_lib or model.device:
            raise click.UsageError(
                "--all tries every delegate itself (cpu, edgetpu, gpu, nnapi); leave out --delegate, --delegate-lib and --device"
            )
        check_outputs({"--json": json_out}, [("--data", data)], [model.model])
        rows = bench_all(
            model.model,
            runs=runs,
            data=data,
            limit=limit,
            max_threads=model.threads,
            runtime=model.runtime,
            ignore_checksum=model.ignore_checksum,
        )
        for line in bench_table(rows):
            click.echo(line)
        if json_out:
            write_text(json_out, json.dumps({"folder": str(model.model), "runs": runs, "rows": rows}, indent=2) + "\n")
        return
    if data is not None or limit is not None:
        raise click.UsageError("--data and --limit go with --all")
    check_outputs({"--json": json_out}, *model_inputs(model.model, model.delegate, model.labels))
    loaded = model.open()
    r = bench(loaded, runs=runs, threads=model.threads)
    click.echo(f"{loaded.path.name} on {loaded.classifier.runtime}, delegate {loaded.delegate}, {runs} runs")
    click.echo(_bench_text(r))
    if json_out:
        write_text(json_out, json.dumps(r, indent=2) + "\n")


@cli.command(name="eval")
@click.option("--model", default=None, type=NonEmptyPath(path_type=Path), help="A run folder or a .tflite file (or give it as MODEL).")
@click.option(
    "--source",
    type=NonEmptyPath(path_type=Path),
    required=True,
    help="A labelled folder: DIR/<class>/*.jpg (class names as in labels.txt; found recursively).",
)
@runtime_options()
@click.option(
    "--labels",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    default=None,
    help="Class names, one per line (default: model.json's, or a labels.txt beside a bare .tflite).",
)
@click.option(
    "--resize",
    type=click.Choice(RESIZE_MODES),
    default="crop",
    show_default=True,
    help="How an image becomes the model's input: as the camera loop does it.",
)
@click.option("--limit", type=click.IntRange(1, None), default=None, help="At most N images, spread over the classes.")
@click.option(
    "--json",
    "json_out",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    default=None,
    help=f"Where to write the result (default: {EVAL_JSON} in the run folder, else here).",
)
@click.option("--follow-links", is_flag=True, help="Read images that links in DIR point to outside it (default: such a link is refused).")
@click.option(
    "--predictions",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    default=None,
    help="Also write each image's answer here, one JSON line each (file under DIR, truth, predicted): to compare devices.",
)
@model_anywhere
@bundle("model", ModelChoice, MODEL_FIELDS)
def eval_cmd(
    model: ModelChoice, source: Path, resize: str, limit: int | None, json_out: Path | None, follow_links: bool, predictions: Path | None
) -> None:
    """Accuracy on this device: a labelled folder through the real runtime, delegate and preprocessing."""
    import json

    from edge_app.measure.bench import measured_on
    from edge_app.measure.evaluate import evaluate_folder

    out = json_out or (Path(model.model) / EVAL_JSON if Path(model.model).is_dir() else Path(EVAL_JSON))
    inputs, runs = model_inputs(model.model, model.delegate, model.labels)
    check_outputs({"--json": out, "--predictions": predictions}, [*inputs, ("--source", source)], runs, writes=(EVAL_JSON,))
    loaded = model.open()
    found = evaluate_folder(loaded, source, resize=resize, limit=limit, follow_links=follow_links, per_image=predictions is not None)
    answers = found.pop("predictions", [])
    r = {**measured_on(loaded, model.threads), **found}
    worst = sorted((v, k) for k, v in r["per_class_recall"].items() if v is not None)[:3]
    click.echo(
        f"{loaded.path.name} on {r['runtime']}, delegate {r['delegate']}: {r['images']:,} images of "
        f"{len(r['classes_found'])} classes: top-1 {100 * r['top1']:.2f}%, top-5 {100 * r['top5']:.2f}%; "
        f"{r['latency_ms']['median']:.2f} ms/image median (p95 {r['latency_ms']['p95']:.2f})"
        + (f"; skipped {r['skipped']} unreadable" if r["skipped"] else "")
    )
    click.echo("lowest recall: " + ", ".join(f"{k} {100 * v:.1f}%" for v, k in worst))
    write_text(out, json.dumps(r, indent=2) + "\n")
    click.echo(f"eval: {out}")
    if predictions is not None:
        write_text(predictions, "".join(json.dumps(a) + "\n" for a in answers))
        click.echo(f"predictions: {predictions}")


cli.add_command(check_input_cmd)
cli.add_command(check_target_cmd)
cli.add_command(agent_cmd)


def main(argv: list[str] | None = None) -> None:
    from edge_app.quiet import entry_point

    entry_point(argv)
    stop_on_sigterm()
    cli.main(args=argv, prog_name="edge-app")
