"""The `nin-pipeline` commands for choosing a model: `compare`, `describe` and `sweep` (registered on
the main group by :func:`register`; thin, as the others: they validate and call plain functions)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from edge_app.cli.checks import device_options
from edge_app.cli.common import check_outputs, write_text
from edge_app.cli.params import NonEmptyPath

from pipeline.cli.params import FOLLOW_LINKS, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, RUN_DIR, SEED, CommaList
from pipeline.data.formats import DATASETS
from pipeline.models.nin import ARCHS, HEADS
from pipeline.runs.profiles import PROFILES


def _echo(text: str, end_line: bool) -> None:
    click.echo(text, nl=end_line)


DEVICE_EVAL = click.option(
    "--device-eval",
    metavar="ALIAS",
    default=None,
    help="With --device: the int8 top-1 on the device's labelled folder ALIAS (given to its agent as --data ALIAS=DIR).",
)


def device_evaluate(command):
    """`evaluate MODEL --device URL --device-eval ALIAS`: the eval job on the device's labelled folder instead of
    this host's test split. Adds the three options to ``command`` and takes them off before it runs."""

    @functools.wraps(command)
    def wrapper(device_url: str | None, device_token: str | None, device_eval: str | None, **kwargs):
        if device_url is None and device_eval is None:
            return command(**kwargs)
        if device_url is None or device_eval is None:
            raise click.UsageError("--device URL and --device-eval ALIAS go together: the device, and the labelled folder it offers")
        from edge_app.contract.files import EVAL_JSON

        from pipeline.choose import device as dv

        model, json_out = kwargs["model"], kwargs["json_out"]
        check_outputs({"--json": json_out}, [("MODEL", model)], [model], writes=(EVAL_JSON,))
        dev = dv.connect(device_url, device_token, device_eval)
        result, lines = dv.evaluate_on_device(model, dev, device_eval, kwargs["limit_test"], kwargs["threads"])
        click.echo("\n".join(lines))
        if json_out:
            write_text(json_out, json.dumps(result, indent=2) + "\n")

    return device_options(DEVICE_EVAL(wrapper))


def register(cli: click.Group) -> None:
    @cli.command()
    @click.argument("runs", nargs=-1, required=True, type=RUN_DIR)
    @click.option("--markdown", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None, help="Also write the table here.")
    @click.option("--json", "json_out", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None, help="The figures as JSON.")
    @click.option(
        "--plot",
        type=NonEmptyPath(dir_okay=False, path_type=Path),
        default=None,
        help="A PNG: QAT int8 top-1 vs int8 ms per image, marker area = bytes, Pareto front marked.",
    )
    @device_options
    def compare(
        runs: tuple[Path, ...], markdown: Path | None, json_out: Path | None, plot: Path | None, device_url: str | None, device_token: str | None
    ) -> None:
        """Put run folders side by side: size, accuracy, int8 speed and Edge TPU ops (e.g. to pick a model).
        With --device, the int8 speed measured on the device (kept as each run's device_bench.json), this host's beside it."""
        from pipeline.choose import compare as cmp

        check_outputs({"--markdown": markdown, "--json": json_out, "--plot": plot}, runs=runs)
        recs = cmp.records(list(runs))
        xlabel = None
        if device_url is not None:
            from pipeline.choose import device as dv

            dev = dv.connect(device_url, device_token)
            recs = dv.with_device(recs, list(runs), dev, _echo)
            xlabel = f"QAT int8 ms per image on {dev.name} (log scale)"
        cmp.print_table(recs)
        if markdown:
            write_text(markdown, cmp.markdown(recs))
        if json_out:
            write_text(json_out, json.dumps({"runs": recs, "pareto": [r["run"] for r in cmp.front(recs)]}, indent=2) + "\n")
        if plot:
            from edge_app.fsutil import atomic_write_bytes

            atomic_write_bytes(plot, cmp.plot(recs, xlabel=xlabel))

    @cli.command()
    @click.option("--arch", type=click.Choice(list(ARCHS)), default="nin-cifar", show_default=True)
    @click.option("--input-size", type=POSITIVE_INT, default=None, help="Default: the arch's own (e.g. 32, 96 or 224).")
    @click.option("--channels", type=click.IntRange(1, 4), default=3, show_default=True)
    @click.option("--classes", type=click.IntRange(2, 100_000), default=10, show_default=True)
    @click.option("--width", type=POSITIVE_FLOAT, default=None, help="Default: the quick profile's, as `build` uses.")
    @click.option("--head", type=click.Choice(HEADS), default="gap", show_default=True, help="nin-cifar's classifier.")
    def describe(arch: str, input_size: int | None, channels: int, classes: int, width: float | None, head: str) -> None:
        """Print each layer's output shape and parameter count."""
        from pipeline.models.nin import ModelConfig, summary_lines

        if width is None:
            width = PROFILES["quick"].width
            click.echo(f"width {width:g} (the quick profile's, as `build` uses; --width to change)")
        size = input_size or ARCHS[arch].default_input_size
        try:
            lines = summary_lines(ModelConfig(arch=arch, num_classes=classes, input_shape=(size, size, channels), width=width, head=head))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--head" if "--head" in str(exc) else "--input-size") from None
        click.echo("\n".join(lines))

    @cli.command()
    @click.option("--out", type=RUN_DIR, required=True, help="The sweep folder: one run folder per candidate inside.")
    @click.option(
        "--archs",
        type=CommaList(click.Choice(list(ARCHS)), "archs"),
        default="nin-cifar",
        show_default=True,
        help="Architectures, comma-separated.",
    )
    @click.option(
        "--widths", type=CommaList(POSITIVE_FLOAT, "widths"), default="0.25", show_default=True, help="Width multipliers, comma-separated."
    )
    @click.option(
        "--input-sizes", type=CommaList(POSITIVE_INT, "sizes"), default=None, help="Input sizes, comma-separated (default: the data's own)."
    )
    @click.option("--dataset", type=click.Choice(DATASETS), default="cifar10", show_default=True)
    @click.option("--data-dir", type=NonEmptyPath(path_type=Path), default=None, envvar="NIN_DATA_DIR")
    @FOLLOW_LINKS
    @click.option("--profile", type=click.Choice(list(PROFILES)), default="quick", show_default=True)
    @click.option("--epochs", type=POSITIVE_INT, default=None, help="Float epochs per candidate (the budget).")
    @click.option("--qat-epochs", type=NON_NEGATIVE_INT, default=None)
    @click.option("--batch-size", type=POSITIVE_INT, default=None)
    @click.option("--limit-train", type=POSITIVE_INT, default=None)
    @click.option("--limit-test", type=POSITIVE_INT, default=None)
    @click.option("--seed", type=SEED, default=0, show_default=True)
    @click.option(
        "--device-latency",
        "device_files",
        multiple=True,
        type=NonEmptyPath(path_type=Path),
        help="An `edge-app bench MODEL --json F` file from the device, or a folder of them (repeat the option): "
        "the device's latency replaces this host's.",
    )
    @device_options
    @DEVICE_EVAL
    @click.option("--latency-budget", type=POSITIVE_FLOAT, default=None, metavar="MS", help="Pick within this int8 latency.")
    @click.option("--size-budget", type=POSITIVE_FLOAT, default=None, metavar="KB", help="Pick within this int8 file size.")
    def sweep(
        out,
        archs,
        widths,
        input_sizes,
        dataset,
        data_dir,
        profile,
        epochs,
        qat_epochs,
        batch_size,
        limit_train,
        limit_test,
        seed,
        device_files,
        device_url,
        device_token,
        device_eval,
        latency_budget,
        size_budget,
    ) -> None:
        """Build every ARCH x WIDTH x SIZE candidate (resumable), then the accuracy-vs-latency Pareto front
        (with --device, the latency measured on the device, each candidate once: run again, it measures only the rest)."""
        from pipeline.choose import compare as cmp
        from pipeline.choose import device as dv
        from pipeline.choose import sweep as sw
        from pipeline.data.formats import resolve_source
        from pipeline.runs.config import BuildRequest
        from pipeline.stages.orchestrator import build

        resolve_source(dataset, data_dir)  # a wrong --data-dir fails before anything is built
        files = [f for p in device_files for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
        if device_files and not files:
            raise click.BadParameter(f"no .json files in {', '.join(map(str, device_files))}", param_hint="--device-latency")
        outputs = [("--out", out / n) for n in (sw.SWEEP_JSON, sw.SWEEP_MD, sw.SWEEP_PNG, sw.SWEEP_HTML)]
        check_outputs(outputs, [("--device-latency", f) for f in files])
        device = sw.device_latencies(files) if files else {}
        if device_url is not None and device_files:
            raise click.UsageError("--device and --device-latency both give the device's latency: give one")
        if device_eval is not None and device_url is None:
            raise click.UsageError("--device-eval goes with --device URL (the device whose folder it names)")
        dev = dv.connect(device_url, device_token, device_eval) if device_url is not None else None  # before hours of building
        common = {
            k: v
            for k, v in dict(epochs=epochs, qat_epochs=qat_epochs, batch_size=batch_size, limit_train=limit_train, limit_test=limit_test).items()
            if v is not None
        }

        def overrides(c):
            return {**common, "width": c.width, **({"input_size": c.input_size} if c.input_size else {})}

        def expected(c):
            return BuildRequest(dataset=dataset, data_dir=data_dir, profile=profile, arch=c.arch, overrides=overrides(c), seed=seed).config()

        def build_one(c, folder):
            build(expected(c), folder)

        out.mkdir(parents=True, exist_ok=True)
        cands = sw.candidates(archs, widths, input_sizes or [])
        folders = sw.run_sweep(out, cands, build_one, expected)
        recs = cmp.records(folders)
        if dev is not None:
            recs = dv.with_device(recs, folders, dev, _echo, device_eval)
        elif device:
            recs = sw.with_device_latency(recs, folders, device)
        choice = sw.pick(recs, latency_budget, size_budget) if latency_budget or size_budget else None
        settings = {
            "archs": archs,
            "widths": widths,
            "input_sizes": input_sizes,
            "dataset": dataset,
            "profile": profile,
            **common,
            "seed": seed,
            "device_latency": [str(f) for f in device_files],
            **({"device": {"url": dev.client.url, **dev.identity()}, "device_eval": device_eval} if dev is not None else {}),
            "latency_budget_ms": latency_budget,
            "size_budget_kb": size_budget,
        }
        front = sw.write_outputs(out, recs, settings, choice)
        cmp.print_table(recs)
        click.echo(
            f"Pareto front (fastest first): {', '.join(front) or '-'}"
            + (f" — latency from {dev.name}" if dev else " — latency from the device" if device else " — latency from this host's reports")
        )
        if choice:
            click.echo(f"pick: {choice['why']}")
        click.echo(f"sweep: {out / sw.SWEEP_HTML}")
        if choice and choice["winner"] is None:
            raise click.exceptions.Exit(1)
