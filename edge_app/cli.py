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


@cli.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--runtime", type=click.Choice(["auto", "ai-edge-litert", "tflite-runtime", "tensorflow"]),
              default="auto", show_default=True)
def info(model: Path, runtime: str) -> None:
    """Load MODEL (a run folder or a .tflite) and print its inputs, outputs and sidecar."""
    from .runtime import ModelLoadError, RuntimeNotFound, load_interpreter
    from .sidecar import SIDECAR_NAME, SidecarError, read_sidecar

    tflite = model / "model_int8.tflite" if model.is_dir() else model
    sidecar_path = tflite.parent / SIDECAR_NAME
    try:
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


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="edge-app")
