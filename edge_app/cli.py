"""`edge-app`: the device-side command. The camera loop (`run`, `bench`) is its own issue;
`info` already checks that a run folder or .tflite loads on this device's runtime."""

from __future__ import annotations

from pathlib import Path

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-app")
def cli() -> None:
    """Run nin-pipeline's int8 models on a device (no TensorFlow needed)."""
    import os

    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # our own messages say what failed


def _write_text(path: Path, text: str) -> None:
    from .fsutil import atomic_write_text

    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None


@cli.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--runtime", type=click.Choice(["auto", "ai-edge-litert", "tflite-runtime", "tensorflow"]),
              default="auto", show_default=True)
def info(model: Path, runtime: str) -> None:
    """Load MODEL (a run folder or a .tflite) and print its inputs, outputs and sidecar."""
    from .loop import resolve_model_path
    from .runtime import ModelLoadError, RuntimeNotFound, load_interpreter
    from .sidecar import SIDECAR_NAME, SidecarError, read_sidecar

    try:
        tflite = resolve_model_path(model)
        sidecar_path = tflite.parent / SIDECAR_NAME
        interp, name = load_interpreter(tflite, runtime=runtime, num_threads=1)
        sidecar = read_sidecar(sidecar_path) if sidecar_path.exists() else None
    except (ModelLoadError, RuntimeNotFound, SidecarError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"model: {tflite} ({tflite.stat().st_size:,} bytes), runtime: {name}")
    for kind, details in (("input", interp.get_input_details()), ("output", interp.get_output_details())):
        for d in details:
            scale, zp = d["quantization"]
            click.echo(f"  {kind} {d['name']}: shape {list(d['shape'])} {d['dtype'].__name__} scale={scale:.6g} zero_point={zp}")
    if sidecar is None:
        click.echo("no model.json beside it: labels would be class indices")
    else:
        click.echo(f"sidecar: {sidecar.dataset} / {sidecar.arch} width {sidecar.width:g}, {sidecar.num_classes} labels: "
                   + ", ".join(sidecar.labels[:10]) + (" ..." if sidecar.num_classes > 10 else ""))


def _kv(ctx, param, values):
    out = {}
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"{v!r} is not key=value")
        k, _, val = v.partition("=")
        out[k.strip()] = val.strip()
    return out


def _open_model(model, runtime, delegate, threads, device, delegate_lib, delegate_options, fallback_cpu=False):
    """open_model with the user's errors turned into one clear message."""
    from .loop import open_model
    from .runtime import DelegateError, ModelLoadError, RuntimeNotFound
    from .sidecar import SidecarError

    options = dict(delegate_options, **({"device": device} if device else {}))
    try:
        return open_model(model, runtime=runtime, delegate=delegate, threads=threads, delegate_lib=delegate_lib,
                          delegate_options=options, fallback_cpu=fallback_cpu)
    except (ModelLoadError, RuntimeNotFound, DelegateError, SidecarError) as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="A run folder (model_int8.tflite + model.json) or a .tflite file.")
@click.option("--source", default="0", show_default=True,
              help="Camera index, /dev/videoN, picamera, a video file, an RTSP/HTTP URL, an image, a folder or a glob.")
@click.option("--runtime", type=click.Choice(["auto", "ai-edge-litert", "tflite-runtime", "tensorflow"]), default="auto",
              show_default=True)
@click.option("--delegate", type=click.Choice(["cpu", "edgetpu", "gpu", "nnapi"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="CPU threads (default: all cores).")
@click.option("--device", default=None, help="Edge TPU device, e.g. usb:0 or pci:0.")
@click.option("--delegate-lib", default=None, help="Path of any external delegate library.")
@click.option("--delegate-option", "delegate_options", multiple=True, callback=_kv, help="key=value for the delegate.")
@click.option("--fallback-cpu", is_flag=True, help="If the delegate fails to load, warn and run on the CPU.")
@click.option("--width", type=click.IntRange(1, 10000), default=None, help="Camera capture width.")
@click.option("--height", type=click.IntRange(1, 10000), default=None, help="Camera capture height.")
@click.option("--fps", type=click.FloatRange(0, 1000, min_open=True), default=None, help="Camera frame rate.")
@click.option("--resize", type=click.Choice(["crop", "letterbox", "stretch"]), default="crop", show_default=True,
              help="How a frame becomes the model's square input.")
@click.option("--top-k", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--max-frames", type=click.IntRange(1, None), default=None)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON lines here instead of stdout.")
@click.option("--summary", "summary_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the end-of-run summary as JSON.")
@click.option("--save-video", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the annotated frames to this .avi or .mp4.")
@click.option("--display", is_flag=True, help="Show annotated frames in a window (q or Esc quits). Default: headless.")
@click.option("--serve", "serve_at", default=None, metavar="[HOST:]PORT",
              help="Serve a live preview page (MJPEG stream, top-k, FPS, /status JSON); binds 127.0.0.1 unless HOST is given.")
@click.option("--max-fps", type=click.FloatRange(0, 1000, min_open=True), default=None,
              help="Cap the frame rate (play a video file at its speed, or spare a device's CPU).")
@click.option("--prefetch/--no-prefetch", default=True, show_default=True,
              help="Capture and pre-process the next frame in a second thread while this one is invoked.")
@click.option("--heatmap", is_flag=True,
              help="Overlay the top class's confidence map (NiN's last block) on drawn frames; add its peak to the JSON.")
def run(model, source, runtime, delegate, threads, device, delegate_lib, delegate_options, fallback_cpu, width, height,
        fps, resize, top_k, threshold, max_frames, output, summary_path, save_video, display, serve_at, max_fps,
        prefetch, heatmap) -> None:
    """Classify frames from a camera, video, stream or images; one JSON line per frame (headless)."""
    import json
    import logging
    import sys

    from .draw import VideoSink, Window
    from .loop import require_class_maps, run_loop
    from .sources import SourceError, open_source

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    loaded = _open_model(model, runtime, delegate, threads, device, delegate_lib, delegate_options, fallback_cpu)
    server = src = None
    try:
        if heatmap:
            require_class_maps(loaded)
        if serve_at is not None:
            from .serve import PreviewServer

            server = PreviewServer(serve_at)
        src = open_source(source, width=width, height=height, fps=fps)
        window = Window() if display else None
    except (SourceError, RuntimeError) as exc:  # ModelLoadError and ServeError are RuntimeErrors
        for opened in (server, src):  # e.g. --display without a screen: the camera is let go at once
            if opened is not None:
                opened.close()
        raise click.ClickException(str(exc)) from None
    sink = VideoSink(str(save_video), fps or 30.0) if save_video else None
    clf = loaded.classifier
    click.echo(f"edge-app: {loaded.path} on {clf.runtime}, delegate {loaded.delegate}, input "
               f"{'x'.join(map(str, clf.input_size))} {clf.input.dtype.name}; source {source}", err=True)
    if server is not None:
        click.echo(f"preview: {server.url}", err=True)
    try:
        out = open(output, "w", buffering=1) if output else sys.stdout
    except OSError as exc:
        src.close()
        if server is not None:
            server.close()
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    try:
        summary = run_loop(loaded, src, out=out, top=top_k, threshold=threshold, max_frames=max_frames, resize=resize,
                           sink=sink, window=window, heatmap=heatmap, preview=server.preview if server else None,
                           max_fps=max_fps, prefetch=prefetch)
    except OSError as exc:  # the video file could not be written
        raise click.ClickException(str(exc)) from None
    finally:
        if output:
            out.close()
        if server is not None:
            server.close()
    d = summary.to_dict()
    stages = ", ".join(f"{k} {v['median']:.2f}/{v['p95']:.2f}" for k, v in d["ms"].items())
    click.echo(f"summary: {d['frames']} frames in {d['seconds']:.1f} s ({d['fps']:.1f} FPS), stopped by {d['stopped_by']}; "
               f"ms median/p95: {stages or '-'}" + (f"; skipped {d['skipped']} unreadable" if d["skipped"] else ""), err=True)
    if summary_path:
        _write_text(summary_path, json.dumps(d, indent=2) + "\n")
    if summary.error:
        raise click.ClickException(summary.error)


@cli.command(name="bench")
@click.option("--model", required=True, type=click.Path(path_type=Path), help="A run folder or a .tflite file.")
@click.option("--runtime", type=click.Choice(["auto", "ai-edge-litert", "tflite-runtime", "tensorflow"]), default="auto",
              show_default=True)
@click.option("--delegate", type=click.Choice(["cpu", "edgetpu", "gpu", "nnapi"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="CPU threads (default: all cores).")
@click.option("--device", default=None, help="Edge TPU device, e.g. usb:0.")
@click.option("--delegate-lib", default=None)
@click.option("--delegate-option", "delegate_options", multiple=True, callback=_kv)
@click.option("--runs", type=click.IntRange(10, 1_000_000), default=300, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def bench_cmd(model, runtime, delegate, threads, device, delegate_lib, delegate_options, runs, json_out) -> None:
    """Invoke-only latency, and the whole loop on synthetic 640x480 frames, side by side."""
    import json

    from .loop import bench

    loaded = _open_model(model, runtime, delegate, threads, device, delegate_lib, delegate_options)
    r = bench(loaded, runs=runs)
    inv, loop = r["invoke_ms"], r["loop"]
    click.echo(f"{loaded.path.name} on {loaded.classifier.runtime}, delegate {loaded.delegate}, {runs} runs")
    click.echo(f"  invoke only : median {inv['median']:.3f} ms, p95 {inv['p95']:.3f} ms, {inv['fps']:.1f} FPS")
    stages = ", ".join(f"{k} {v['median']:.3f}" for k, v in loop["ms"].items())
    click.echo(f"  whole loop  : {loop['fps']:.1f} FPS on {r['frame']} frames (median ms: {stages})")
    click.echo(f"  loop / invoke FPS: {r['loop_over_invoke_fps']:.2f} with prefetch, "
               f"{r['loop_no_prefetch_over_invoke_fps']:.2f} without ({r['loop_no_prefetch']['fps']:.1f} FPS)")
    if json_out:
        _write_text(json_out, json.dumps(r, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="edge-app")
